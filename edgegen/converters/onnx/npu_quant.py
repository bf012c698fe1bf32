"""w8a16 NPU bundles: the fp32 graphs quantized to QDQ with onnxruntime's own QNN tooling
(`qnn_preprocess_model`, `get_qnn_qdq_config`, `quantize`): int8 weights per output channel,
uint16 activations, scales calibrated (min/max) on text run through the fp32 graphs the way the
runtime runs them (core/static_feeds.py): prefill chunks for the chunk graph, one-token steps over
a filled cache for the step graph."""

from __future__ import annotations

import contextlib
import logging
import shutil
import warnings
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnx

from edgegen.archs._decoder import DecoderConfig
from edgegen.core.errors import ConfigError
from edgegen.core.static_feeds import NEG, HostCache, StaticShape, causal

STEP_SAMPLES = 48  # one-token calibration runs of the step graph
CHUNK_SAMPLES = 16  # calibration runs of the chunk graph


WEIGHT_BITS = {"w8a16": "QInt8", "w4a16": "QInt4"}


def quantize_graphs(c: DecoderConfig, scratch: Path, graphs: dict[str, Path], table: np.ndarray, capacity: int,
                    chunk: int, ids: list[int], on_stage: Callable[[str], None],
                    precision: str = "w8a16") -> dict[str, onnx.ModelProto]:
    """The QDQ protos of `graphs` ({"chunk": fp32 path, "step": fp32 path}) in `scratch`."""
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config, qnn_preprocess_model

    if len(ids) < chunk + STEP_SAMPLES:
        raise ConfigError(f"the calibration text gives {len(ids)} tokens; w8a16 needs at least {chunk + STEP_SAMPLES}")
    on_stage(f"calibrating {precision}")
    samples = calibration_feeds(c, graphs, table, capacity, chunk, ids)

    class Reader(CalibrationDataReader):
        def __init__(self, feeds: list[dict[str, np.ndarray]]):
            self.feeds = iter(feeds)

        def get_next(self):
            return next(self.feeds, None)

    out = {}
    for role, path in graphs.items():
        on_stage(f"quantizing the {role} graph to {precision}")
        prepared = scratch / f"{role}.prepared.onnx"
        source = prepared if qnn_preprocess_model(str(path), str(prepared)) else path
        config = get_qnn_qdq_config(str(source), Reader(samples[role]), activation_type=QuantType.QUInt16,
                                    weight_type=getattr(QuantType, WEIGHT_BITS[precision]), per_channel=True)
        config.use_external_data_format = True  # a 0.5B model's fp32 graph is over protobuf's 2 GB
        target = scratch / f"{role}.{precision}.onnx"
        with _quiet():
            quantize(str(source), str(target), config)
        out[role] = onnx.load(str(target))
    return out


def calibration_feeds(c: DecoderConfig, graphs: dict[str, Path], table: np.ndarray, capacity: int, chunk: int,
                      ids: list[int]) -> dict[str, list[dict[str, np.ndarray]]]:
    """Inputs of the fp32 graphs over `ids`: each chunk of a prefill (block-causal for diffusion
    LLMs), then single steps over the cache it filled."""
    import onnxruntime as ort

    sessions = {role: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for role, p in graphs.items()}
    shape = StaticShape(c.hidden_size, c.num_attention_heads // c.num_key_value_heads, c.inv_freq(), capacity,
                        NEG["w8a16"])  # the same mask value for every QDQ precision
    cache = HostCache(c.num_hidden_layers, c.num_key_value_heads, c.head_dim, capacity)
    block = c.diffusion.block_size if c.diffusion is not None else None
    prefill = ids[: min(len(ids) - STEP_SAMPLES, CHUNK_SAMPLES * chunk, capacity - STEP_SAMPLES)]
    feeds: dict[str, list] = {"chunk": [], "step": []}
    for at in range(0, len(prefill) - chunk + 1, chunk):
        part = prefill[at:at + chunk]
        allowed = causal(cache.length, chunk)
        if block:  # a diffusion block sees itself whole
            allowed[:, cache.length:] = (np.arange(chunk)[None, :] // block) <= (np.arange(chunk)[:, None] // block)
        feeds["chunk"].append(_run(sessions["chunk"], shape, cache, table[part], allowed, chunk, c))
    for token in ids[len(prefill):len(prefill) + STEP_SAMPLES]:
        feeds["step"].append(_run(sessions["step"], shape, cache, table[[token]], causal(cache.length, 1), 1, c))
    return feeds


def _run(session, shape: StaticShape, cache: HostCache, x: np.ndarray, allowed: np.ndarray, size: int,
         c: DecoderConfig) -> dict[str, np.ndarray]:
    """Run one graph, keep its new keys and values, return a copy of what it was fed."""
    positions = cache.length + np.arange(len(x))
    feed = {**shape.inputs(x.astype(np.float32), positions, allowed, cache.length, size),
            **{k: v.copy() for k, v in cache.feeds().items()}}
    out = session.run(None, feed)
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, out))
    layers = c.num_hidden_layers
    cache.write([got[f"new_key.{i}"] for i in range(layers)], [got[f"new_value.{i}"] for i in range(layers)], len(x))
    return feed


class _quiet:
    """onnxruntime's quantizer logs every node and warns about opset upgrades: kept off the user's screen."""

    def __enter__(self) -> None:
        self.level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)
        self.warnings = warnings.catch_warnings()
        self.warnings.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc: object) -> None:
        self.warnings.__exit__(*exc)
        logging.getLogger().setLevel(self.level)


@contextlib.contextmanager
def scratch_folder(out: Path) -> Iterator[Path]:
    folder = out / ".npu-scratch"
    folder.mkdir()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
