"""Write an NPU bundle: `npu.chunk.onnx` and `npu.step.onnx` (static shapes, standard ops) sharing
one weights file, and the input embedding table the host reads (`npu.embed.safetensors`)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnx_ir as ir

from edgegen.archs._decoder import DecoderConfig
from edgegen.converters.onnx.npu import build_npu_decoder
from edgegen.converters.onnx.shared_weights import share_weights, tensor_digests
from edgegen.core.errors import ConfigError

CHUNK_FILE, STEP_FILE = "npu.chunk.onnx", "npu.step.onnx"
DATA_FILE, EMBED_FILE = "npu.onnx.data", "npu.embed.safetensors"
PRECISIONS = ("fp32", "fp16", "w8a16", "w4a16")
# Memory a conversion needs beyond the loaded weights, in multiples of their fp32 size (measured
# on the Qwen2.5-0.5B shape, 2 GB of fp32 weights: fp16 peaked at 11 GB, w8a16 at 23 GB: two
# graphs in memory, and for w8a16 onnxruntime's quantizer and calibration copies of them).
MEMORY_FACTOR = {"fp32": 3, "fp16": 4.5, "w8a16": 10, "w4a16": 10}
DEFAULT_CONTEXT, DEFAULT_CHUNK = 1024, 16


def check_npu_options(c: DecoderConfig, context: int | None, chunk: int | None) -> tuple[int, int]:
    """(context, chunk): the cache capacity and the chunk graph's inputs, checked against the model."""
    context = min(DEFAULT_CONTEXT, c.context_length) if context is None else context
    chunk = DEFAULT_CHUNK if chunk is None else chunk
    if not 16 <= context <= c.context_length:
        raise ConfigError(f"--context {context} must be from 16 to the model's context length {c.context_length}")
    if not 2 <= chunk <= min(256, context // 2):
        raise ConfigError(f"--chunk {chunk} must be from 2 to {min(256, context // 2)} (half the --context)")
    if c.diffusion is not None and c.diffusion.block_size and chunk < c.diffusion.block_size:
        raise ConfigError(f"--chunk {chunk} is smaller than this diffusion LLM's block of "
                          f"{c.diffusion.block_size}; a block must fit one chunk")
    return context, chunk


def export_npu(c: DecoderConfig, weights: dict[str, np.ndarray], out: Path, *, context: int, chunk: int,
               precision: str, on_stage: Callable[[str], None] = lambda s: None,
               calibration_ids: list[int] | None = None) -> dict[str, str]:
    if precision not in PRECISIONS:
        raise ConfigError(f"--quant {precision!r} is not offered for NPU bundles; choose {', '.join(PRECISIONS)}")
    from safetensors.numpy import save_file

    from edgegen.core.memory import check_fits

    fp32_bytes = sum(w.size for w in weights.values()) * 4
    check_fits(int(MEMORY_FACTOR[precision] * fp32_bytes), f"a {precision} NPU bundle of this model",
               "convert on a machine with more memory" + (", or choose --quant fp16" if precision == "w8a16" else ""))
    on_stage("building NPU graphs")
    if precision in ("w8a16", "w4a16"):
        protos = _quantized(c, weights, out, context, chunk, calibration_ids or [], on_stage, precision)
    else:
        protos = {}
        for name, size in ((CHUNK_FILE, chunk), (STEP_FILE, 1)):
            proto = ir.serde.serialize_model(build_npu_decoder(c, weights, chunk=size, capacity=context))
            protos[name] = _to_fp16(proto) if precision == "fp16" else proto
    on_stage("saving NPU graphs")
    digests = tensor_digests(protos[CHUNK_FILE])  # before saving, which moves the values out of the proto
    onnx.save_model(protos[CHUNK_FILE], str(out / CHUNK_FILE), save_as_external_data=True,
                    all_tensors_to_one_file=True, location=DATA_FILE, size_threshold=1024)
    share_weights(protos[STEP_FILE], out / CHUNK_FILE, digests)
    onnx.save_model(protos[STEP_FILE], str(out / STEP_FILE))
    table = weights["model.embed_tokens.weight"].astype(np.float16 if precision == "fp16" else np.float32)
    save_file({"embed_tokens": np.ascontiguousarray(table)}, str(out / EMBED_FILE))
    return {"npu_chunk": CHUNK_FILE, "npu_step": STEP_FILE, "npu_weights": DATA_FILE, "npu_embed": EMBED_FILE}


def _quantized(c: DecoderConfig, weights: dict[str, np.ndarray], out: Path, context: int, chunk: int,
               ids: list[int], on_stage: Callable[[str], None], precision: str) -> dict[str, onnx.ModelProto]:
    """The QDQ graphs (w8a16 or w4a16), quantized from fp32 graphs written to a scratch folder."""
    from edgegen.converters.onnx.npu_quant import quantize_graphs, scratch_folder

    with scratch_folder(out) as scratch:
        graphs = {}
        for role, size in (("chunk", chunk), ("step", 1)):
            graphs[role] = scratch / f"{role}.onnx"
            onnx.save_model(ir.serde.serialize_model(build_npu_decoder(c, weights, chunk=size, capacity=context)),
                            str(graphs[role]), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=f"{role}.onnx.data", size_threshold=1024)
        table = weights["model.embed_tokens.weight"].astype(np.float32)
        protos = quantize_graphs(c, scratch, graphs, table, context, chunk, ids, on_stage, precision)
    return {CHUNK_FILE: protos["chunk"], STEP_FILE: protos["step"]}



def _to_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Weights and compute in float16; inputs and outputs stay float32 (cast at the edges)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(proto, keep_io_types=True, disable_shape_infer=True)
