"""The decoder-only transformer as an ONNX graph of ONNX Runtime's fused CPU ops.

    input_ids ─ Gather ─ Concat(inputs_embeds) ─┬─ SimplifiedLayerNorm ─ attention ─ SkipSimplifiedLayerNorm ─ MLP ─┐
                                                └─────────── residual ────────────────┘          (× layers) ─────┘
    ─ SkipSimplifiedLayerNorm ─ Slice(last `logits_to_keep`) ─ lm_head ─ logits

Attention is `com.microsoft::GroupQueryAttention` with fused rotary; its past and present KV are
meant to share one buffer per layer (BNSH, capacity × head_dim), which the runtime binds in place.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx_ir as ir

from edgegen.archs._decoder import DecoderConfig
from edgegen.converters.onnx import grouped_decode
from edgegen.converters.onnx._builder import MS, GraphBuilder

F32, I64, I32 = ir.DataType.FLOAT, ir.DataType.INT64, ir.DataType.INT32
Weights = dict[str, np.ndarray]


def build_decoder(c: DecoderConfig, w: Weights, *, separate_lm_head: bool,
                  on_layer: Callable[[int], None] = lambda i: None, genai: bool = False) -> ir.Model:
    """The whole graph. `separate_lm_head` gives the head its own (transposed) MatMul weight even
    when embeddings are tied, so that weight quantization can turn it into MatMulNBits.

    Autoregressive models attend causally (GQA's own mask) and keep the last `logits_to_keep`
    positions. Diffusion LLMs attend with `causal=0`, an `attention_bias` (the block structure, as
    data) and explicit `position_ids`, and keep the positions [start, end) of `logits_range`.

    `genai`: the inputs onnxruntime-genai's generator loop feeds (`input_ids`, `attention_mask`,
    the KV cache), its sequence lengths computed from the mask inside the graph, logits for every
    input, no grouped decode step: a second graph for that runtime (autoregressive models only)."""
    g = GraphBuilder()
    ids = g.input("input_ids", I64, ["batch_size", "ids_length" if not genai else "sequence_length"])
    if genai:
        step = _lengths_from_mask(g, g.input("attention_mask", I64, ["batch_size", "total_sequence_length"]))
        embeds = keep = None
    else:
        embeds = g.input("inputs_embeds", F32, ["batch_size", "embeds_length", c.hidden_size])
        step = {"seqlens_k": g.input("seqlens_k", I32, ["batch_size"]),
                "total_len": g.input("total_sequence_length", I32, [])}
    if genai:
        pass
    elif c.diffusion is None:
        keep = g.input("logits_to_keep", I64, [1])
    else:
        step["positions"] = g.input("position_ids", I64, ["batch_size", "sequence_length"])
        step["bias"] = g.input("attention_bias", F32, [1, 1, "sequence_length", "total_sequence_length"])
        keep = g.input("logits_range", I64, [2])
    step["cos"], step["sin"] = _rotary_caches(g, c)
    table = g.weight("model.embed_tokens.weight", w["model.embed_tokens.weight"])  # (vocab, hidden)
    x = g.op("Gather", "/model/embed_tokens", [table, ids])  # (B, S_ids, hidden)
    if embeds is not None:
        x = g.op("Concat", "/model/inputs", [x, embeds], axis=1)  # token ids first, then given embeddings
    if _grouped(c) and not genai:
        grouped_decode.step_inputs(g, c, x, step)
    residual, delta = x, None
    for i in range(c.num_hidden_layers):
        h, residual = _norm(g, c, w, f"model.layers.{i}.input_layernorm", delta, residual)
        past = [g.input(f"past_key_values.{i}.{kv}", F32, ["batch_size", c.num_key_value_heads, "past_sequence_length", c.head_dim])
                for kv in ("key", "value")]
        attn, present_k, present_v = _attention(g, c, w, i, h, past, step)
        h, residual = _norm(g, c, w, f"model.layers.{i}.post_attention_layernorm", attn, residual)
        delta = _mlp(g, c, w, i, h)
        for kv, value in (("key", present_k), ("value", present_v)):
            g.output(value, f"present.{i}.{kv}", F32,
                     ["batch_size", c.num_key_value_heads, "present_sequence_length", c.head_dim])
        on_layer(i)
    h, _ = _norm(g, c, w, "model.norm", delta, residual)
    if genai:  # logits of every input: the generator picks the last
        g.output(_lm_head(g, c, w, h, table, separate_lm_head), "logits", F32,
                 ["batch_size", "sequence_length", c.vocab_size])
        return g.model(f"edgegen {c.model_type} decoder for onnxruntime-genai")
    if c.diffusion is None:
        start, end = g.op("Neg", "/model/logits_to_keep", [keep]), g.const([np.iinfo(np.int64).max])
    else:
        start, end = g.ops("Split", "/model/logits_range", [keep], 2, axis=0, num_outputs=2)
    h = g.op("Slice", "/model/kept_positions", [h, start, end, g.const([1])])
    g.output(_lm_head(g, c, w, h, table, separate_lm_head), "logits", F32, ["batch_size", "kept_length", c.vocab_size])
    return g.model(f"edgegen {c.model_type} decoder")


def _lengths_from_mask(g: GraphBuilder, mask: ir.Value) -> dict[str, ir.Value]:
    """GroupQueryAttention's seqlens_k (tokens seen − 1 per row) and total_sequence_length, from
    the (B, total) attention mask onnxruntime-genai feeds."""
    seen = g.op("ReduceSum", "/model/attn_mask/seen", [mask, g.const([1])], keepdims=0)  # (B,)
    last = g.op("Sub", "/model/attn_mask/last", [seen, g.const(1)])
    total = g.op("Gather", "/model/attn_mask/total", [g.op("Shape", "/model/attn_mask/shape", [mask]), g.const(1)],
                 axis=0)
    return {"seqlens_k": g.op("Cast", "/model/attn_mask/seqlens_k", [last], to=ir.DataType.INT32),
            "total_len": g.op("Cast", "/model/attn_mask/total_len", [total], to=ir.DataType.INT32)}


def _grouped(c: DecoderConfig) -> bool:
    """Causal models whose KV heads serve several query heads run decode steps grouped, where
    that pays for its `If` (grouped_decode.pays)."""
    return c.diffusion is None and grouped_decode.group_size(c) > 1 and grouped_decode.pays(c)


def _rotary_caches(g: GraphBuilder, c: DecoderConfig) -> tuple[ir.Value, ir.Value]:
    """cos / sin per position; GQA wants rows up to its total length, which a grouped decode step
    stretches by the G − 1 key copies it writes after the new token."""
    rows = c.context_length + (grouped_decode.group_size(c) - 1 if _grouped(c) else 0)
    angles = np.outer(np.arange(rows, dtype=np.float64), c.inv_freq())  # (positions, Dh/2)
    return (g.weight("cos_cache", np.cos(angles).astype(np.float32)),
            g.weight("sin_cache", np.sin(angles).astype(np.float32)))


def _norm(g: GraphBuilder, c: DecoderConfig, w: Weights, hf: str, delta: ir.Value | None,
          residual: ir.Value) -> tuple[ir.Value, ir.Value]:
    """Norm of `residual + delta` (RMSNorm, or LayerNorm with a bias); returns (normed, new residual).
    Fused with the residual add when there is one."""
    scope, leaf = hf.rsplit(".", 1)
    name = "/" + scope.replace("model.", "model/", 1) + "/" + leaf  # /model/layers.0/input_layernorm
    gamma = g.weight(hf + ".weight", w[hf + ".weight"])
    if c.norm == "layer":
        beta = g.weight(hf + ".bias", w[hf + ".bias"])
        if delta is None:
            return g.op("LayerNormalization", name, [residual, gamma, beta], axis=-1, epsilon=c.rms_norm_eps), residual
        out, _, _, summed = g.ops("SkipLayerNormalization", name, [delta, residual, gamma, beta], 4, domain=MS,
                                  epsilon=c.rms_norm_eps)
        return out, summed
    if delta is None:
        return g.op("SimplifiedLayerNormalization", name, [residual, gamma], axis=-1, epsilon=c.rms_norm_eps), residual
    out, _, _, summed = g.ops("SkipSimplifiedLayerNormalization", name, [delta, residual, gamma], 4, domain=MS,
                              epsilon=c.rms_norm_eps)
    return out, summed


def _linear(g: GraphBuilder, w: Weights, name: str, x: ir.Value, hf: str) -> ir.Value:
    """x @ W.T (+ b), with the Hugging Face (out, in) weight stored transposed as MatMul wants."""
    y = g.op("MatMul", name, [x, g.weight(hf + ".weight.T", w[hf + ".weight"].T)])
    if hf + ".bias" in w:
        y = g.op("Add", name + "/bias", [y, g.weight(hf + ".bias", w[hf + ".bias"])])
    return y


def _packed_linear(g: GraphBuilder, w: Weights, name: str, x: ir.Value, parts: list[str]) -> ir.Value:
    """x @ [W_a; W_b; ...].T (+ [b_a, b_b, ...]): several projections of the same input in one MatMul."""
    packed = np.concatenate([w[p + ".weight"].T for p in parts], axis=1)  # (in, sum of outs)
    y = g.op("MatMul", name, [x, g.weight(name[1:].replace("/", ".") + ".weight.T", packed)])
    if any(p + ".bias" in w for p in parts):
        bias = np.concatenate([w.get(p + ".bias", np.zeros(w[p + ".weight"].shape[0], np.float32)) for p in parts])
        y = g.op("Add", name + "/bias", [y, g.weight(name[1:].replace("/", ".") + ".bias", bias)])
    return y


def _attention(g: GraphBuilder, c: DecoderConfig, w: Weights, i: int, h: ir.Value, past: list[ir.Value],
               step: dict[str, ir.Value]):
    """q, k and v come from one packed MatMul (one weight read, one kernel per token)."""
    name, hf = f"/model/layers.{i}/attn", f"model.layers.{i}.self_attn."
    qkv = _packed_linear(g, w, f"{name}/qkv_proj", h, [hf + "q_proj", hf + "k_proj", hf + "v_proj"])
    q_dim, kv_dim = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    if c.qk_norm:  # (B, S, (Hq + 2 Hkv) Dh) → q (B, S, Hq Dh), k, v (B, S, Hkv Dh)
        q, k, v = g.ops("Split", f"{name}/qkv_split", [qkv, g.const([q_dim, kv_dim, kv_dim])], 3, axis=-1)
        q = _head_norm(g, c, f"{name}/q_norm", q, c.num_attention_heads, w[hf + "q_norm.weight"], hf + "q_norm.weight")
        k = _head_norm(g, c, f"{name}/k_norm", k, c.num_key_value_heads, w[hf + "k_norm.weight"], hf + "k_norm.weight")
        qkv_inputs = [q, k, v]
    else:  # GroupQueryAttention takes the packed projection as its query input
        qkv_inputs = [qkv, None, None]
    attributes = dict(num_heads=c.num_attention_heads, kv_num_heads=c.num_key_value_heads, do_rotary=1,
                      rotary_interleaved=0, scale=float(c.head_dim ** -0.5), causal=0 if "bias" in step else 1)
    if "grouped" in step:  # decode steps take the grouped call (grouped_decode.py)
        out, present_k, present_v = grouped_decode.branches(g, c, name, qkv_inputs, past, step, attributes)
        return _linear(g, w, f"{name}/o_proj", out, hf + "o_proj"), present_k, present_v
    inputs = [*qkv_inputs, past[0], past[1], step["seqlens_k"], step["total_len"], step["cos"], step["sin"]]
    if "bias" in step:  # diffusion LLMs: the mask is data (attention_bias), positions are explicit
        inputs += [step["positions"], step["bias"]]
    out, present_k, present_v = g.ops("GroupQueryAttention", name, inputs, 3, domain=MS, **attributes)
    return _linear(g, w, f"{name}/o_proj", out, hf + "o_proj"), present_k, present_v


def _head_norm(g: GraphBuilder, c: DecoderConfig, name: str, x: ir.Value, heads: int, gamma: np.ndarray,
               hf: str) -> ir.Value:
    """RMSNorm over each head: (B, S, H*Dh) → (B, S, H, Dh) → norm → (B, S, H*Dh)."""
    x = g.op("Reshape", f"{name}/split_heads", [x, g.const([0, 0, heads, c.head_dim])])
    x = g.op("SimplifiedLayerNormalization", name, [x, g.weight(hf, gamma)], axis=-1, epsilon=c.rms_norm_eps)
    return g.op("Reshape", f"{name}/merge_heads", [x, g.const([0, 0, heads * c.head_dim])])


def _mlp(g: GraphBuilder, c: DecoderConfig, w: Weights, i: int, h: ir.Value) -> ir.Value:
    name, hf = f"/model/layers.{i}/mlp", f"model.layers.{i}.mlp."
    if c.mlp == "gelu":  # up (+ bias), tanh GELU, down (+ bias)
        up = _linear(g, w, f"{name}/up_proj", h, hf + "up_proj")
        return _linear(g, w, f"{name}/down_proj", g.op("Gelu", f"{name}/act_fn", [up], approximate="tanh"),
                       hf + "down_proj")
    gate_up = _packed_linear(g, w, f"{name}/gate_up_proj", h, [hf + "gate_proj", hf + "up_proj"])
    gate, up = g.ops("Split", f"{name}/gate_up_split", [gate_up], 2, axis=-1, num_outputs=2)
    silu = g.op("Mul", f"{name}/act_fn", [gate, g.op("Sigmoid", f"{name}/act_fn", [gate])])
    return _linear(g, w, f"{name}/down_proj", g.op("Mul", f"{name}/gate_up", [silu, up]), hf + "down_proj")


def _lm_head(g: GraphBuilder, c: DecoderConfig, w: Weights, h: ir.Value, table: ir.Value,
             separate: bool) -> ir.Value:
    if not c.tie_word_embeddings:
        return _linear(g, w, "/lm_head", h, "lm_head")
    if separate:
        return g.op("MatMul", "/lm_head", [h, g.weight("lm_head.weight.T", w["model.embed_tokens.weight"].T)])
    # Tied and unquantized: Gemm with transB reads the embedding table itself, no transposed copy.
    flat = g.op("Reshape", "/lm_head/flatten", [h, g.const([-1, c.hidden_size])])
    logits = g.op("Gemm", "/lm_head", [flat, table], transB=1)
    lead = g.op("Shape", "/lm_head/shape", [h], start=0, end=2)
    shape = g.op("Concat", "/lm_head/out_shape", [lead, g.const([c.vocab_size])], axis=0)
    return g.op("Reshape", "/lm_head/unflatten", [logits, shape])
