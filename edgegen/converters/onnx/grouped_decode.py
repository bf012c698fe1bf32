"""A one-token decode step's attention with each KV head's query heads as the rows of one matrix.

GroupQueryAttention's CPU kernel loops over query heads: in a one-token step each query head is a
matrix-vector product over its KV head's cache, so that cache is read (and, when quantized,
unpacked) once per query head, G = heads / kv_heads times (7 for Qwen2.5-0.5B's 14 / 2). The step
is run instead as a GQA call with one query head per KV head and G query rows, all at the new
token's position: the kernel then multiplies G rows at once per KV head. The new key and value are
given G times (GQA wants as many as there are query rows); `attention_bias` hides all copies but
the first, so every row sees exactly the keys its head sees in the ordinary call. The G − 1 extra
copies land in the cache after the new token, where the runtime keeps room for them; the cache
advances by one token and the next step overwrites them.

    q (B, 1, G·Hkv·Dh) ─ Reshape (B, Hkv, G, Dh) ─ Transpose ─ Reshape (B, G, Hkv·Dh) ─┐
    k, v (B, 1, Hkv·Dh) ─ Expand (B, G, Hkv·Dh) ────────────────────────────────────────┴─ GQA(Hkv, Hkv,
        causal=0, positions = [n − 1] × G, bias = 0 for the n real keys, −inf for the copies)
    ─ (B, G, Hkv·Dh) ─ Reshape (B, G, Hkv, Dh) ─ Transpose ─ Reshape (B, 1, G·Hkv·Dh)

An `If` picks this branch for one-token feeds into a non-empty cache (the kernel reads the first
position only of a feed into an empty cache) and the ordinary call for everything else.

The `If` is not free: ONNX Runtime sets up a subgraph run for it in every layer of every forward,
some 10-40 µs per layer on this CPU, while what the step saves grows with the cache: (G − 1)
fewer passes over each KV head's keys and values. Measured one-token steps, with the `If` against
without it: the Qwen2.5-0.5B shape (G 7, 2 × 64 per KV row, 24 layers, q4) 0.96× at 256 cached
tokens, 1.0× at 1k, 1.07× at 4k; tiny-chat (G 3, 6 layers) 0.94× at 64 and 0.89× at 1000 (its
context is 1024); tiny-draft (G 2) 0.86-0.88×. So a model gets the grouped step only where its
context reaches well past the break-even (about (G − 1) · Hkv · Dh · tokens = 0.8 M there):
`pays`. `EDGEGEN_GROUPED_DECODE=1` (or 0) at convert time overrides the choice.
"""

from __future__ import annotations

import os

import numpy as np
import onnx_ir as ir

from edgegen.archs._decoder import DecoderConfig
from edgegen.converters.onnx._builder import MS, GraphBuilder


BREAK_EVEN = 800_000  # (G − 1) · Hkv · Dh · cached tokens where the step starts to pay for its If
MARGIN = 4  # the model's context must reach this many times the break-even


def group_size(c: DecoderConfig) -> int:
    return c.num_attention_heads // c.num_key_value_heads


def pays(c: DecoderConfig) -> bool:
    """Does the grouped step pay for its `If` over enough of this model's context?"""
    forced = os.environ.get("EDGEGEN_GROUPED_DECODE", "")
    if forced in ("0", "1"):
        return forced == "1"
    saved_per_token = (group_size(c) - 1) * c.num_key_value_heads * c.head_dim
    return saved_per_token * c.context_length >= MARGIN * BREAK_EVEN


def step_inputs(g: GraphBuilder, c: DecoderConfig, x: ir.Value, step: dict[str, ir.Value]) -> None:
    """What every layer's grouped branch shares, computed once per forward into `step`: whether
    this feed is a decode step, and the grouped call's lengths, positions and bias."""
    G = group_size(c)
    n, total = step["seqlens_k"], step["total_len"]
    length = g.op("Shape", "/model/grouped/feed_length", [x], start=1, end=2)  # (1,) tokens in the feed
    one_token = g.op("Equal", "/model/grouped/one_token", [length, g.const([1])])
    has_past = g.op("Greater", "/model/grouped/has_past", [total, g.const(1, np.int32)])
    step["grouped"] = g.op("Squeeze", "/model/grouped/is_step",
                           [g.op("And", "/model/grouped/decode", [one_token, has_past])])
    extra = g.const(G - 1, np.int32)
    step["g_seqlens_k"] = g.op("Add", "/model/grouped/seqlens_k", [n, extra])
    step["g_total_len"] = g.op("Add", "/model/grouped/total_len", [total, extra])
    last = g.op("Cast", "/model/grouped/last", [g.op("Sub", "/model/grouped/last", [total, g.const(1, np.int32)])],
                to=ir.DataType.INT64)
    step["g_positions"] = g.op("Expand", "/model/grouped/positions", [last, g.const([1, G])])  # (1, G)
    columns = g.op("Range", "/model/grouped/columns",
                   [g.const(0), g.op("Cast", "/model/grouped/columns", [step["g_total_len"]], to=ir.DataType.INT64),
                    g.const(1)])
    real = g.op("Less", "/model/grouped/real_keys",
                [columns, g.op("Cast", "/model/grouped/real_keys", [total], to=ir.DataType.INT64)])
    row = g.op("Where", "/model/grouped/bias", [real, g.const(0.0, np.float32), g.const(-np.inf, np.float32)])
    row = g.op("Reshape", "/model/grouped/bias", [row, g.const([1, 1, 1, -1])])
    step["g_bias"] = g.op("Expand", "/model/grouped/bias", [row, g.const([1, 1, G, 1])])  # (1, 1, G, n + G − 1)


def branches(g: GraphBuilder, c: DecoderConfig, name: str, qkv: list[ir.Value | None], past: list[ir.Value],
             step: dict[str, ir.Value], attributes: dict) -> list[ir.Value]:
    """One `If` choosing the grouped call for decode steps and the ordinary one otherwise; returns
    the attention output and the two presents."""
    plain_inputs = [*qkv, past[0], past[1], step["seqlens_k"], step["total_len"], step["cos"], step["sin"]]
    plain = _branch(g, name + "/plain", plain_inputs, attributes)
    grouped = _grouped(g, c, name + "/grouped", qkv, past, step, attributes)
    outs = g.ops("If", name, [step["grouped"]], 3, then_branch=grouped, else_branch=plain)
    return list(outs)


def _grouped(g: GraphBuilder, c: DecoderConfig, name: str, qkv: list[ir.Value | None], past: list[ir.Value],
             step: dict[str, ir.Value], attributes: dict) -> ir.Graph:
    G, Hkv, Dh = group_size(c), c.num_key_value_heads, c.head_dim
    sub = GraphBuilder(consts=g)
    q, k, v = qkv
    if k is None:  # the packed projection: (B, 1, (G·Hkv + 2 Hkv) Dh)
        q, k, v = sub.ops("Split", f"{name}/qkv_split", [q, g.const([G * Hkv * Dh, Hkv * Dh, Hkv * Dh])], 3, axis=-1)
    q = sub.op("Reshape", f"{name}/q_heads", [q, g.const([-1, Hkv, G, Dh])])
    q = sub.op("Transpose", f"{name}/q_rows", [q], perm=[0, 2, 1, 3])
    q = sub.op("Reshape", f"{name}/q_rows", [q, g.const([-1, G, Hkv * Dh])])  # (B, G, Hkv·Dh)
    k = sub.op("Expand", f"{name}/k_copies", [k, g.const([1, G, 1])])
    v = sub.op("Expand", f"{name}/v_copies", [v, g.const([1, G, 1])])
    inputs = [q, k, v, past[0], past[1], step["g_seqlens_k"], step["g_total_len"], step["cos"], step["sin"],
              step["g_positions"], step["g_bias"]]
    out, present_k, present_v = sub.ops("GroupQueryAttention", name, inputs, 3, domain=MS,
                                        **{**attributes, "num_heads": Hkv, "causal": 0})
    out = sub.op("Reshape", f"{name}/out_rows", [out, g.const([-1, G, Hkv, Dh])])
    out = sub.op("Transpose", f"{name}/heads", [out], perm=[0, 2, 1, 3])
    out = sub.op("Reshape", f"{name}/heads", [out, g.const([-1, 1, G * Hkv * Dh])])
    return sub.graph(f"{name}_branch", [out, present_k, present_v])


def _branch(g: GraphBuilder, name: str, inputs: list[ir.Value | None], attributes: dict) -> ir.Graph:
    sub = GraphBuilder(consts=g)
    outs = sub.ops("GroupQueryAttention", name, inputs, 3, domain=MS, **attributes)
    return sub.graph(f"{name}_branch", list(outs))
