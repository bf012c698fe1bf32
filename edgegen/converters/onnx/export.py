"""Write `model.onnx` + external data: build the fp32 graph, then quantize weights to MatMulNBits
(and the embedding to GatherBlockQuantized) with onnxruntime's own quantization tools."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnx_ir as ir

from edgegen.archs._decoder import DecoderConfig
from edgegen.converters.onnx import kv
from edgegen.converters.onnx.decoder import build_decoder
from edgegen.converters.onnx.shared_weights import share_weights, tensor_digests
from edgegen.core.manifest import Quantization

MODEL_FILE = "model.onnx"
GENAI_FILE = "model.genai.onnx"
DATA_FILE = "model.onnx.data"
ACCURACY_LEVEL = 4  # int8 activations inside MatMulNBits on CPU: the fast kernels (VNNI / SDOT)


def export_onnx(config: DecoderConfig, weights: dict[str, np.ndarray], out: Path, quant: Quantization,
                on_layer: Callable[[int], None], on_stage: Callable[[str], None] = lambda s: None,
                calibration_ids: list[int] | None = None) -> dict[str, str]:
    """model.onnx + model.onnx.data, the KV-cache variants (model.kv{16,8,4}.onnx, same data) and,
    given `calibration_ids`, the static KV scales the int8/int4 variants read."""
    on_stage("building graph")
    model = build_decoder(config, weights, separate_lm_head=quant.bits is not None, on_layer=on_layer)
    proto = ir.serde.serialize_model(model)
    del model
    if quant.bits:
        on_stage(f"quantizing to {quant.method}")
        proto = _quantize(proto, quant)
    on_stage("saving")
    digests = tensor_digests(proto)  # before saving, which moves the values out of the proto
    onnx.save_model(proto, str(out / MODEL_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=DATA_FILE, size_threshold=1024)
    del proto
    shape = (config.num_hidden_layers, config.num_key_value_heads, config.head_dim)
    files = {"model": MODEL_FILE, "weights": DATA_FILE, **kv.write_kv_variants(out, MODEL_FILE, *shape)}
    if config.diffusion is None:
        on_stage("building the onnxruntime-genai graph")
        files["genai_model"] = _write_genai_graph(config, weights, out, quant, digests)
    if calibration_ids:
        on_stage("calibrating KV scales")
        files["kv_scales"] = kv.save_scales(out, kv.calibrate(out, MODEL_FILE, calibration_ids, *shape))
    return files


def _write_genai_graph(config: DecoderConfig, weights: dict[str, np.ndarray], out: Path, quant: Quantization,
                       digests: dict[str, str]) -> str:
    """`model.genai.onnx`: the graph with onnxruntime-genai's inputs (genai.py), reading the same
    weights file as model.onnx wherever a tensor is the same; what differs goes to its own file."""
    proto = ir.serde.serialize_model(build_decoder(config, weights, separate_lm_head=quant.bits is not None,
                                                   genai=True))
    if quant.bits:
        proto = _quantize(proto, quant)
    share_weights(proto, out / MODEL_FILE, digests)
    onnx.save_model(proto, str(out / GENAI_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=GENAI_FILE + ".data", size_threshold=1024)
    return GENAI_FILE


def _quantize(proto: onnx.ModelProto, quant: Quantization) -> onnx.ModelProto:
    from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig,
                                                                 MatMulNBitsQuantizer)

    # GatherBlockQuantized (the quantized embedding) exists for 4 bits only; q8 keeps an fp32 table.
    ops = ("MatMul", "Gather") if quant.bits == 4 else ("MatMul",)
    axes = (("MatMul", 0), ("Gather", 1))
    config = DefaultWeightOnlyQuantConfig(block_size=quant.group_size, is_symmetric=True, bits=quant.bits,
                                          accuracy_level=ACCURACY_LEVEL, op_types_to_quantize=ops, quant_axes=axes)
    quantizer = MatMulNBitsQuantizer(proto, bits=quant.bits, block_size=quant.group_size, is_symmetric=True,
                                     accuracy_level=ACCURACY_LEVEL, algo_config=config,
                                     op_types_to_quantize=ops, quant_axes=axes)
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.WARNING)  # the quantizer logs every node at INFO
    try:
        with warnings.catch_warnings():  # all-zero blocks (e.g. padding rows) divide 0 by 0, then get 0
            warnings.simplefilter("ignore", RuntimeWarning)
            quantizer.process()
    finally:
        logging.getLogger().setLevel(level)
    return quantizer.model.model
