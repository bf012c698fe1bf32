"""The decoder as static-shape graphs of standard ONNX ops, for NPUs (QNN HTP, CoreML, OpenVINO).

One builder, two sizes: the chunk graph takes C new inputs (prefill, draft verification, a
diffusion block), the step graph one. Every shape is fixed; the KV cache has a fixed capacity N
and lives on the host:

    inputs_embeds (1, C, hidden) ──┬─ RMSNorm ─ q,k,v ─ RoPE(cos, sin) ─ attention over [past ; new] ─ o ─┐
                                   └──────────────────── residual ──────────────────────────────────────┘ (× layers)
    ─ norm ─ lm_head ─ logits (1, C, vocab)            new_key.{i}, new_value.{i} (1, Hkv, C, Dh)

    attention_mask (1, 1, G·C, N + C) additive: 0 where input i may see key j, a large negative
                                      elsewhere; the C rows repeated for each of the G query heads
                                      that share a KV head
    cos, sin       (1, 1, C, Dh)      RoPE of each input's position, sin signed [−sin, sin] (the host
                                      computes them), so that rotate_half is a Concat without a Neg
    past_key.{i}, past_value.{i} (1, Hkv, N, Dh)

The graph returns only the new positions' keys and values; the host writes them into its cache
buffers. Because the mask is data, causal, block-causal, bidirectional and hidden-slot attention
(the `Feed` contract) are all the same graph; because inputs are embeddings, the lookup (and
superposed decoding's mixtures) happens on the host. The LM head stays inside: on an NPU the
(hidden × vocab) MatMul is the kind of work it does fastest, and its logits are the only large
output either way.

Grouped-query attention does not copy keys: the G query heads of a KV head are stacked as rows,
(1, Hkv, G·C, Dh) against (1, Hkv, N + C, Dh), and the mask comes with G·C rows to match.

Opset 17 and no Tile, Neg, Gelu or Reduce*-with-axes-input: onnxruntime's mobile checker then
finds every node supported by CoreML's MLProgram and by NNAPI in one partition, and QNN's HTP
takes them all.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgegen.archs._decoder import DecoderConfig
from edgegen.converters.onnx._builder import GraphBuilder

F32 = ir.DataType.FLOAT
Weights = dict[str, np.ndarray]
OPSET = 17


def build_npu_decoder(c: DecoderConfig, w: Weights, *, chunk: int, capacity: int) -> ir.Model:
    """The graph for `chunk` new inputs over a cache of `capacity` slots."""
    g = GraphBuilder()
    C, N, Dh = chunk, capacity, c.head_dim
    x = g.input("inputs_embeds", F32, [1, C, c.hidden_size])
    group = c.num_attention_heads // c.num_key_value_heads
    mask = g.input("attention_mask", F32, [1, 1, group * C, N + C])  # row g·C + i: query head g, input i
    rope = (g.input("cos", F32, [1, 1, C, Dh]), g.input("sin", F32, [1, 1, C, Dh]))
    residual = x
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        h = _norm(g, c, w, p + "input_layernorm", residual)
        past = [g.input(f"past_{kv}.{i}", F32, [1, c.num_key_value_heads, N, Dh]) for kv in ("key", "value")]
        attn, new_k, new_v = _attention(g, c, w, i, h, past, mask, rope, C)
        residual = g.op("Add", f"/model/layers.{i}/attn/residual", [residual, attn])
        h = _norm(g, c, w, p + "post_attention_layernorm", residual)
        residual = g.op("Add", f"/model/layers.{i}/mlp/residual", [residual, _mlp(g, c, w, i, h)])
        g.output(new_k, f"new_key.{i}", F32, [1, c.num_key_value_heads, C, Dh])
        g.output(new_v, f"new_value.{i}", F32, [1, c.num_key_value_heads, C, Dh])
    h = _norm(g, c, w, "model.norm", residual)
    g.output(_lm_head(g, c, w, h), "logits", F32, [1, C, c.vocab_size])
    return g.model(f"edgegen {c.model_type} NPU decoder, {C} inputs over {N} cache slots", opsets={"": OPSET})


def _norm(g: GraphBuilder, c: DecoderConfig, w: Weights, hf: str, x: ir.Value) -> ir.Value:
    name = "/" + hf.replace("model.", "model/", 1).replace(".", "/")
    gamma = g.weight(hf + ".weight", w[hf + ".weight"])
    if c.norm == "layer":
        return g.op("LayerNormalization", name, [x, gamma, g.weight(hf + ".bias", w[hf + ".bias"])],
                    axis=-1, epsilon=c.rms_norm_eps)
    return _rms(g, name, x, gamma, c.rms_norm_eps)


def _rms(g: GraphBuilder, name: str, x: ir.Value, gamma: ir.Value, eps: float) -> ir.Value:
    """x / sqrt(mean(x²) + eps) · gamma, in standard ops (RMSNormalization is opset 23)."""
    mean = g.op("ReduceMean", f"{name}/mean_square", [g.op("Mul", f"{name}/square", [x, x])], axes=[-1], keepdims=1)
    root = g.op("Sqrt", f"{name}/root", [g.op("Add", f"{name}/eps", [mean, g.const(eps, np.float32)])])
    return g.op("Mul", f"{name}/scale", [g.op("Div", f"{name}/normed", [x, root]), gamma])


def _linear(g: GraphBuilder, w: Weights, name: str, x: ir.Value, hf: str) -> ir.Value:
    y = g.op("MatMul", name, [x, g.weight(hf + ".weight.T", np.ascontiguousarray(w[hf + ".weight"].T))])
    if hf + ".bias" in w:
        y = g.op("Add", name + "/bias", [y, g.weight(hf + ".bias", w[hf + ".bias"])])
    return y


def _heads(g: GraphBuilder, name: str, x: ir.Value, heads: int, C: int, Dh: int) -> ir.Value:
    """(1, C, H·Dh) → (1, H, C, Dh)."""
    x = g.op("Reshape", f"{name}/split_heads", [x, g.const([1, C, heads, Dh])])
    return g.op("Transpose", f"{name}/heads_first", [x], perm=[0, 2, 1, 3])


def _rotate(g: GraphBuilder, name: str, x: ir.Value, rope: tuple[ir.Value, ir.Value], Dh: int) -> ir.Value:
    """RoPE, half-split layout: x·cos + [−x₂, x₁]·sin = x·cos + [x₂, x₁]·[−sin, sin] (the input's sin)."""
    half = Dh // 2
    x1 = g.op("Slice", f"{name}/first_half", [x, g.const([0]), g.const([half]), g.const([-1])])
    x2 = g.op("Slice", f"{name}/second_half", [x, g.const([half]), g.const([Dh]), g.const([-1])])
    turned = g.op("Concat", f"{name}/swap_halves", [x2, x1], axis=-1)
    return g.op("Add", f"{name}/rope", [g.op("Mul", f"{name}/cos", [x, rope[0]]),
                                        g.op("Mul", f"{name}/sin", [turned, rope[1]])])


def _attention(g: GraphBuilder, c: DecoderConfig, w: Weights, i: int, h: ir.Value, past: list[ir.Value],
               mask: ir.Value, rope: tuple[ir.Value, ir.Value], C: int):
    name, hf = f"/model/layers.{i}/attn", f"model.layers.{i}.self_attn."
    Dh, Hq, Hkv = c.head_dim, c.num_attention_heads, c.num_key_value_heads
    q = _heads(g, f"{name}/q", _linear(g, w, f"{name}/q_proj", h, hf + "q_proj"), Hq, C, Dh)  # (1, Hq, C, Dh)
    k = _heads(g, f"{name}/k", _linear(g, w, f"{name}/k_proj", h, hf + "k_proj"), Hkv, C, Dh)  # (1, Hkv, C, Dh)
    v = _heads(g, f"{name}/v", _linear(g, w, f"{name}/v_proj", h, hf + "v_proj"), Hkv, C, Dh)
    if c.qk_norm:
        q = _rms(g, f"{name}/q_norm", q, g.weight(hf + "q_norm.weight", w[hf + "q_norm.weight"]), c.rms_norm_eps)
        k = _rms(g, f"{name}/k_norm", k, g.weight(hf + "k_norm.weight", w[hf + "k_norm.weight"]), c.rms_norm_eps)
    q, k = _rotate(g, f"{name}/q", q, rope, Dh), _rotate(g, f"{name}/k", k, rope, Dh)
    keys = g.op("Concat", f"{name}/keys", [past[0], k], axis=2)  # (1, Hkv, N + C, Dh)
    values = g.op("Concat", f"{name}/values", [past[1], v], axis=2)
    group = Hq // Hkv
    rows = g.op("Reshape", f"{name}/q/rows_per_kv_head", [q, g.const([1, Hkv, group * C, Dh])])
    scores = g.op("MatMul", f"{name}/scores", [rows, g.op("Transpose", f"{name}/keys_t", [keys], perm=[0, 1, 3, 2])])
    scores = g.op("Add", f"{name}/masked", [g.op("Mul", f"{name}/scaled", [scores, g.const(Dh ** -0.5, np.float32)]),
                                            mask])  # (1, Hkv, G·C, N + C)
    out = g.op("MatMul", f"{name}/context", [g.op("Softmax", f"{name}/probs", [scores], axis=-1), values])
    out = g.op("Reshape", f"{name}/q_heads", [out, g.const([1, Hq, C, Dh])])
    out = g.op("Transpose", f"{name}/inputs_first", [out], perm=[0, 2, 1, 3])
    out = g.op("Reshape", f"{name}/merge_heads", [out, g.const([1, C, Hq * Dh])])
    return _linear(g, w, f"{name}/o_proj", out, hf + "o_proj"), k, v


def _mlp(g: GraphBuilder, c: DecoderConfig, w: Weights, i: int, h: ir.Value) -> ir.Value:
    name, hf = f"/model/layers.{i}/mlp", f"model.layers.{i}.mlp."
    up = _linear(g, w, f"{name}/up_proj", h, hf + "up_proj")
    if c.mlp == "gelu":
        act = _gelu_tanh(g, f"{name}/act_fn", up)
    else:
        gate = _linear(g, w, f"{name}/gate_proj", h, hf + "gate_proj")
        silu = g.op("Mul", f"{name}/act_fn", [gate, g.op("Sigmoid", f"{name}/act_fn", [gate])])
        act = g.op("Mul", f"{name}/gate_up", [silu, up])
    return _linear(g, w, f"{name}/down_proj", act, hf + "down_proj")


def _gelu_tanh(g: GraphBuilder, name: str, x: ir.Value) -> ir.Value:
    """0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))): GELU's tanh form (the Gelu op is opset 20)."""
    cube = g.op("Mul", f"{name}/cube", [g.op("Mul", f"{name}/square", [x, x]), x])
    inner = g.op("Add", f"{name}/inner", [x, g.op("Mul", f"{name}/cubic", [cube, g.const(0.044715, np.float32)])])
    tanh = g.op("Tanh", f"{name}/tanh", [g.op("Mul", f"{name}/scaled", [inner, g.const((2 / np.pi) ** 0.5, np.float32)])])
    half = g.op("Mul", f"{name}/half", [x, g.const(0.5, np.float32)])
    return g.op("Mul", f"{name}/gelu", [half, g.op("Add", f"{name}/one_plus", [tanh, g.const(1.0, np.float32)])])


def _lm_head(g: GraphBuilder, c: DecoderConfig, w: Weights, h: ir.Value) -> ir.Value:
    table = w["model.embed_tokens.weight"] if c.tie_word_embeddings else w["lm_head.weight"]
    y = g.op("MatMul", "/lm_head", [h, g.weight("lm_head.weight.T", np.ascontiguousarray(table.T))])
    if "lm_head.bias" in w:
        y = g.op("Add", "/lm_head/bias", [y, g.weight("lm_head.bias", w["lm_head.bias"])])
    return y
