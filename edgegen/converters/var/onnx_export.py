"""Write the ONNX side of a VAR model: three graphs with external data, optionally with weights
stored as fp16 (computed in fp32) or quantized.

Quantization: `--quant q8` makes every MatMul of the transformer and the conditioning an int8
MatMulInteger (per-channel int8 weights, activations quantized on the fly), about 2.5× the fp32
speed on x86 CPUs, and the decoder's convolutions static int8 (QDQ → QLinearConv, per-channel
weights, activation ranges calibrated on f̂ maps built from random tokens; dynamic ConvInteger was
3× slower than fp32 here). `--quant q4`
makes them block-wise int4 MatMulNBits (a quarter of the weight memory, about fp32 speed on x86)
and keeps the decoder fp32. The logits head stays fp32 either way, as upstream keeps it.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnx_ir as ir

from edgegen.archs import _var as arch
from edgegen.converters.var import onnx_graphs
from edgegen.core.manifest import Quantization

GRAPHS = {"cond": "var_cond.onnx", "step": "var_step.onnx", "decoder": "var_decoder.onnx"}
ACCURACY_LEVEL = 4  # int8 activations inside MatMulNBits: the VNNI / SDOT kernels


def export_onnx(c: arch.VARConfig, var: dict[str, np.ndarray], vae: dict[str, np.ndarray], out: Path,
                dtype: str, quant: Quantization, on_stage: Callable[[str], None] = lambda s: None,
                calibration: Callable[[], list[np.ndarray]] = lambda: []) -> dict[str, str]:
    """`calibration()` gives (1, Cvae, h, w) f̂ maps for the int8 decoder's activation ranges."""
    files: dict[str, str] = {}
    builders = {"cond": (onnx_graphs.build_cond, var), "step": (onnx_graphs.build_step, var),
                "decoder": (onnx_graphs.build_decoder, vae)}
    for role, (build, weights) in builders.items():
        on_stage(f"building {role} graph")
        proto = ir.serde.serialize_model(build(c, weights))
        if quant.bits == 4 and role != "decoder":
            on_stage(f"quantizing {role} to int4")
            proto = quantize_nbits(proto, quant)
        elif quant.bits == 8 and role == "decoder":
            on_stage("calibrating the int8 decoder")
            proto = quantize_convs(proto, calibration())
        elif quant.bits == 8:
            on_stage(f"quantizing {role} to int8")
            proto = quantize_int8(proto)
        if dtype == "fp16":
            proto = store_fp16(proto)
        name = GRAPHS[role]
        onnx.save_model(proto, str(out / name), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=name + ".data", size_threshold=1024)
        files[role] = name
    return files


def _quiet(run: Callable[[], None]) -> None:
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # the quantizers log every node, and advice, below ERROR
    try:
        with warnings.catch_warnings():  # all-zero blocks divide 0 by 0, then get 0
            warnings.simplefilter("ignore", RuntimeWarning)
            run()
    finally:
        logging.getLogger().setLevel(level)


def quantize_nbits(proto: onnx.ModelProto, quant: Quantization) -> onnx.ModelProto:
    """Block-wise MatMulNBits for every weight MatMul but the logits head."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig,
                                                                 MatMulNBitsQuantizer)

    exclude = [n.name for n in proto.graph.node if n.name.startswith("/head/")]
    config = DefaultWeightOnlyQuantConfig(block_size=quant.group_size, is_symmetric=True, bits=quant.bits,
                                          accuracy_level=ACCURACY_LEVEL, op_types_to_quantize=("MatMul",))
    quantizer = MatMulNBitsQuantizer(proto, bits=quant.bits, block_size=quant.group_size, is_symmetric=True,
                                     accuracy_level=ACCURACY_LEVEL, nodes_to_exclude=exclude, algo_config=config,
                                     op_types_to_quantize=("MatMul",))
    _quiet(quantizer.process)
    return quantizer.model.model


def quantize_int8(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Dynamic int8 for every weight MatMul but the logits head: per-channel int8 weights, uint8
    activations quantized per call (MatMulInteger). Weights use 7 bits (`reduce_range`): x86 CPUs
    without VNNI multiply uint8 × int8 pairs into saturating int16 sums (VPMADDUBSW), which with
    full-range weights cost 0.16 of the logits' range on an AVX2-only EPYC; 7-bit weights cannot
    saturate, and VNNI machines lose little (the test's bound holds on both)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    exclude = [n.name for n in proto.graph.node if n.name.startswith("/head/")]
    return _through_files(proto, lambda src, dst: quantize_dynamic(
        src, dst, op_types_to_quantize=["MatMul"], nodes_to_exclude=exclude, weight_type=QuantType.QInt8,
        per_channel=True, reduce_range=True, use_external_data_format=True))


def quantize_convs(proto: onnx.ModelProto, f_hats: list[np.ndarray]) -> onnx.ModelProto:
    """Static int8 convolutions (QDQ: uint8 activations with calibrated ranges, per-channel int8
    weights), which ONNX Runtime runs as QLinearConv."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{"f_hat": f} for f in f_hats])

        def get_next(self):
            return next(self.feeds, None)

    return _through_files(proto, lambda src, dst: quantize_static(
        src, dst, Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"], per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
        use_external_data_format=True))


def _through_files(proto: onnx.ModelProto, quantize: Callable[[str, str], None]) -> onnx.ModelProto:
    """onnxruntime's quantizers work on files: save, quantize quietly, load the result."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save_model(proto, str(src), save_as_external_data=True, location="in.onnx.data")
        _quiet(lambda: quantize(str(src), str(dst)))
        return onnx.load_model(str(dst))


def store_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Large float initializers stored as fp16 and cast back to fp32 at load (ONNX Runtime folds the
    casts when it builds the session): half the file size, fp32 arithmetic."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    kept, casts = [], []
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or np.prod(init.dims) < 1024:
            kept.append(init)
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name + "/fp16")
        kept.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=onnx.TensorProto.FLOAT,
                                      name=f"{init.name}/Cast"))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return proto
