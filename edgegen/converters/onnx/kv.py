"""KV-cache variants of an exported decoder: the same weights (one `model.onnx.data`), graphs whose
GroupQueryAttention stores K/V as fp16, int8 or int4, and the static per-channel scales the
quantized ones need, calibrated at convert time on a bundled text.

Why GroupQueryAttention's own quantized cache: its CPU kernel reads int8/int4 K/V straight from
one shared past/present buffer (written in place, as the float cache is), so attention reads 4×
or 8× fewer bytes than over an fp32 cache and nothing is dequantized into a full copy. Its scales
are static per (layer, KV head, channel) for keys and for values: channels are where key outliers
live (KIVI), and the calibration measures each channel's range after RoPE on real text.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

# bits -> (file, cache element type, packed values per byte)
VARIANTS = {16: ("model.kv16.onnx", TensorProto.FLOAT16, 1), 8: ("model.kv8.onnx", TensorProto.INT8, 1),
            4: ("model.kv4.onnx", TensorProto.UINT8, 2)}
SCALES_FILE = "kv_scales.safetensors"
CALIBRATION_TOKENS = 512


def write_kv_variants(folder: Path, model_file: str, num_layers: int, kv_heads: int,
                      head_dim: int) -> dict[str, str]:
    """Write one graph per KV precision next to `model_file`; returns {"kv16": file, ...}."""
    files = {}
    for bits, (name, dtype, per_byte) in VARIANTS.items():
        proto = onnx.load(str(folder / model_file), load_external_data=False)
        _retype_cache(proto.graph, dtype, head_dim // per_byte)
        if bits < 16:
            _quantize_attention(proto.graph, bits, num_layers, kv_heads, head_dim)
        onnx.save_model(proto, str(folder / name))  # initializers still point at model.onnx.data
        files[f"kv{bits}"] = name
    return files


def _retype_cache(graph: onnx.GraphProto, dtype: int, last_dim: int) -> None:
    for value in list(graph.input) + list(graph.output):
        if value.name.startswith(("past_key_values.", "present.")):
            tensor = value.type.tensor_type
            tensor.elem_type = dtype
            tensor.shape.dim[3].dim_value = last_dim


def _quantize_attention(graph: onnx.GraphProto, bits: int, num_layers: int, kv_heads: int, head_dim: int) -> None:
    """GQA attributes for a quantized cache, plus per-layer scale inputs (1, Hkv, 1, Dh)."""
    layers = _attention_layers(graph)
    if len(layers) != num_layers:
        raise RuntimeError(f"found {len(layers)} attention layers for {num_layers} layers")
    for layer, nodes in enumerate(layers):
        names = [f"kv_scale.{layer}.key", f"kv_scale.{layer}.value"]
        for node in nodes:
            inputs = list(node.input) + [""] * (12 - len(node.input))  # k_scale, v_scale are inputs 12, 13
            del node.input[:]
            node.input.extend(inputs[:12] + names)
            node.attribute.extend([helper.make_attribute("kv_cache_bit_width", bits),
                                   helper.make_attribute("k_quant_type", "PER_CHANNEL"),
                                   helper.make_attribute("v_quant_type", "PER_CHANNEL")])
        for name in names:
            graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, kv_heads, 1, head_dim]))


def _attention_layers(graph: onnx.GraphProto) -> list[list[onnx.NodeProto]]:
    """Each layer's GroupQueryAttention nodes, in order: one, or the two branches of the `If` that
    picks the grouped decode step (grouped_decode.py)."""
    layers = []
    for node in graph.node:
        if node.op_type == "GroupQueryAttention":
            layers.append([node])
        elif node.op_type == "If":
            branches = [a.g for a in node.attribute if a.name in ("then_branch", "else_branch")]
            layers.append([n for b in branches for n in b.node if n.op_type == "GroupQueryAttention"])
    return layers


def calibrate(folder: Path, model_file: str, ids: list[int], num_layers: int, kv_heads: int,
              head_dim: int) -> dict[str, np.ndarray]:
    """Per (layer, KV head, channel) absolute maxima of K (after RoPE) and V over `ids`, from one
    fp32 prefill: {"layers.{i}.key": (Hkv, Dh), "layers.{i}.value": (Hkv, Dh)}."""
    from edgegen.runtimes.onnx.session import create_session

    session = create_session(folder / model_file, "cpu")
    n = len(ids)
    empty = np.zeros((1, kv_heads, 0, head_dim), np.float32)
    feeds = {"input_ids": np.asarray([ids], np.int64), "inputs_embeds": np.zeros((1, 0, _hidden(session)), np.float32),
             "seqlens_k": np.asarray([n - 1], np.int32), "total_sequence_length": np.asarray(n, np.int32),
             "logits_to_keep": np.asarray([1], np.int64)}
    feeds.update({f"past_key_values.{i}.{kind}": empty for i in range(num_layers) for kind in ("key", "value")})
    names_in = {i.name for i in session.get_inputs()}
    if "attention_bias" in names_in:  # a diffusion LLM's graph: calibrate on causal attention over the text
        causal = np.tril(np.ones((n, n), dtype=bool))
        feeds.pop("logits_to_keep")
        feeds.update(position_ids=np.arange(n, dtype=np.int64)[None], logits_range=np.asarray([n - 1, n], np.int64),
                     attention_bias=np.where(causal, 0.0, -np.inf).astype(np.float32)[None, None])
    names = [f"present.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]
    presents = session.run(names, feeds)
    return {name.replace("present.", "layers."): np.abs(p[0]).max(axis=1).astype(np.float32)  # (Hkv, Dh)
            for name, p in zip(names, presents)}


def _hidden(session) -> int:
    return next(i.shape[2] for i in session.get_inputs() if i.name == "inputs_embeds")


def save_scales(folder: Path, absmax: dict[str, np.ndarray]) -> str:
    from safetensors.numpy import save_file

    save_file(absmax, str(folder / SCALES_FILE), metadata={"what": "KV absmax per layer, head, channel"})
    return SCALES_FILE
