"""The three ONNX graphs of a VAR model, built block by block with onnx-ir (no torch export):

    var_cond.onnx     class_embeds (R, C) → ada (R, 6·depth + 2, C)
                      every block's (γ1, γ2, 1+s1, 1+s2, b1, b2) and the head's (1+scale, shift);
                      constant across the scales, so it runs once per image
    var_step.onnx     inputs_embeds (R, l, C), ada, attn_bias (l, P+l), past_key.i / past_value.i
                      (R, H, P, hd) → logits (R, l, V), present_key.i / present_value.i (R, H, P+l, hd)
    var_decoder.onnx  f_hat (B, Cvae, h, w) → image (B, H, W, 3) in [0, 1]

Folded at conversion: qkv bias = [q_bias, 0, v_bias]; exp(min(scale_mul, ln 100)); the AdaLN
"1 + scale". Node names follow `/blocks.{i}/attn/qkv/MatMul`.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from edgegen.archs import _var as arch
from edgegen.converters.onnx._builder import GraphBuilder

F32 = ir.DataType.FLOAT
I64 = ir.DataType.INT64


def _linear(g: GraphBuilder, name: str, x: ir.Value, weight: np.ndarray, bias: np.ndarray | None) -> ir.Value:
    """x @ weightᵀ (+ bias); weight in torch's (out, in) layout."""
    y = g.op("MatMul", name, [x, g.weight(f"{name}.weight", np.ascontiguousarray(weight.T))])
    return g.op("Add", f"{name}/bias", [y, g.weight(f"{name}.bias", bias)]) if bias is not None else y


# =========================================================================== conditioning
def build_cond(c: arch.VARConfig, w: dict[str, np.ndarray]) -> ir.Model:
    C, D = c.embed_dim, c.depth
    g = GraphBuilder()
    cond = g.input("class_embeds", F32, ["rows", C])
    act = g.op("Mul", "/cond/silu", [cond, g.op("Sigmoid", "/cond/silu", [cond])])
    if c.shared_aln:  # one shared projection plus a learned per-block offset
        shared = _linear(g, "/cond/shared_ada_lin", act, w["shared_ada_lin.1.weight"], w["shared_ada_lin.1.bias"])
        shared = g.op("Reshape", "/cond/shared", [shared, g.const([-1, 1, 6 * C])])
        gss = np.concatenate([w[f"blocks.{i}.ada_gss"].reshape(1, 6 * C) for i in range(D)])  # (D, 6C)
        blocks = g.op("Add", "/cond/gss", [shared, g.weight("/cond/ada_gss", gss)])  # (R, D, 6C)
        blocks = g.op("Reshape", "/cond/blocks", [blocks, g.const([-1, 6 * D, C])])
        head = _linear(g, "/cond/head_nm", act, w["head_nm.ada_lin.1.weight"], w["head_nm.ada_lin.1.bias"])
        head = g.op("Reshape", "/cond/head", [head, g.const([-1, 2, C])])
        ada = g.op("Concat", "/cond/ada", [blocks, head], axis=1)
    else:  # every block's projection and the head's in one MatMul
        weight = np.concatenate([w[f"blocks.{i}.ada_lin.1.weight"] for i in range(D)] + [w["head_nm.ada_lin.1.weight"]])
        bias = np.concatenate([w[f"blocks.{i}.ada_lin.1.bias"] for i in range(D)] + [w["head_nm.ada_lin.1.bias"]])
        ada = _linear(g, "/cond/ada_lin", act, weight, bias)
        ada = g.op("Reshape", "/cond/ada", [ada, g.const([-1, 6 * D + 2, C])])
    one = np.zeros((6 * D + 2, C), np.float32)  # "1 + scale" rows: 2, 3 of each block, the head's first
    one[[6 * i + j for i in range(D) for j in (2, 3)] + [6 * D]] = 1.0
    ada = g.op("Add", "/cond/one_plus_scale", [ada, g.weight("/cond/ones", one)])
    g.output(ada, "ada", F32, ["rows", 6 * D + 2, C])
    return g.model("VAR conditioning (AdaLN parameters of every block and the head)")


# =========================================================================== transformer step
def build_step(c: arch.VARConfig, w: dict[str, np.ndarray]) -> ir.Model:
    C, D, H, hd = c.embed_dim, c.depth, c.num_heads, c.head_dim
    g = GraphBuilder()
    x = g.input("inputs_embeds", F32, ["rows", "length", C])
    ada_in = g.input("ada", F32, ["rows", 6 * D + 2, C])
    bias = g.input("attn_bias", F32, ["length", "total"])
    ada = g.ops("Split", "/ada", [ada_in], 6 * D + 2, axis=1, num_outputs=6 * D + 2)  # each (R, 1, C)
    ones, zeros = g.weight("/ln/ones", np.ones(C, np.float32)), g.weight("/ln/zeros", np.zeros(C, np.float32))

    def modulated_ln(name: str, h: ir.Value, scale: ir.Value, shift: ir.Value) -> ir.Value:
        h = g.op("LayerNormalization", name, [h, ones, zeros], axis=-1, epsilon=c.norm_eps)
        return g.op("Add", f"{name}/shift", [g.op("Mul", f"{name}/scale", [h, scale]), shift])

    for i in range(D):
        p, gamma1, gamma2, s1, s2, b1, b2 = f"blocks.{i}", *ada[6 * i: 6 * i + 6]
        past_k = g.input(f"past_key.{i}", F32, ["rows", H, "past", hd])
        past_v = g.input(f"past_value.{i}", F32, ["rows", H, "past", hd])
        h = modulated_ln(f"/{p}/ln1", x, s1, b1)
        attn, k, v = _attention(g, c, w, p, h, past_k, past_v, bias)
        g.output(k, f"present_key.{i}", F32, ["rows", H, "total", hd])
        g.output(v, f"present_value.{i}", F32, ["rows", H, "total", hd])
        x = g.op("Add", f"/{p}/attn/residual", [x, g.op("Mul", f"/{p}/attn/gamma", [attn, gamma1])])
        h = modulated_ln(f"/{p}/ln2", x, s2, b2)
        h = _linear(g, f"/{p}/ffn/fc1", h, w[f"{p}.ffn.fc1.weight"], w[f"{p}.ffn.fc1.bias"])
        h = g.op("Gelu", f"/{p}/ffn/gelu", [h], approximate="tanh")
        h = _linear(g, f"/{p}/ffn/fc2", h, w[f"{p}.ffn.fc2.weight"], w[f"{p}.ffn.fc2.bias"])
        x = g.op("Add", f"/{p}/ffn/residual", [x, g.op("Mul", f"/{p}/ffn/gamma", [h, gamma2])])
    h = modulated_ln("/head_nm", x, ada[6 * D], ada[6 * D + 1])
    logits = _linear(g, "/head", h, w["head.weight"], w["head.bias"])
    g.output(logits, "logits", F32, ["rows", "length", c.vocab_size])
    return g.model("VAR transformer step: all blocks and the head over one scale, KV cache in and out")


def _attention(g: GraphBuilder, c: arch.VARConfig, w: dict[str, np.ndarray], p: str, h: ir.Value,
               past_k: ir.Value, past_v: ir.Value, bias: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value]:
    """Self-attention over [past; new] with q/k L2-normalised (q times a learned per-head scale,
    softmax scale 1) or upstream's 0.25/√hd; returns (output (R, l, C), keys, values)."""
    C, H, hd = c.embed_dim, c.num_heads, c.head_dim
    qkv_bias = np.concatenate([w[f"{p}.attn.q_bias"], np.zeros(C, np.float32), w[f"{p}.attn.v_bias"]])
    qkv = _linear(g, f"/{p}/attn/qkv", h, w[f"{p}.attn.mat_qkv.weight"], qkv_bias)
    qkv = g.op("Reshape", f"/{p}/attn/qkv/split_heads", [qkv, g.const([0, 0, 3, H, hd])])
    qkv = g.op("Transpose", f"/{p}/attn/qkv/heads_first", [qkv], perm=[2, 0, 3, 1, 4])  # (3, R, H, l, hd)
    q, k, v = (g.op("Squeeze", f"/{p}/attn/{n}", [t, g.const([0])])
               for n, t in zip("qkv", g.ops("Split", f"/{p}/attn/qkv/split", [qkv], 3, axis=0, num_outputs=3)))
    if c.attn_l2_norm:
        scale = np.exp(np.minimum(w[f"{p}.attn.scale_mul_1H11"], math.log(100.0))).astype(np.float32)
        q = g.op("Mul", f"/{p}/attn/q_scale", [_l2_normalize(g, f"/{p}/attn/q_norm", q),
                                               g.weight(f"{p}.attn.scale_mul", scale)])
        k = _l2_normalize(g, f"/{p}/attn/k_norm", k)
    else:
        q = g.op("Mul", f"/{p}/attn/q_scale", [q, g.weight(f"{p}.attn.scale", np.float32(0.25 / math.sqrt(hd)))])
    k = g.op("Concat", f"/{p}/attn/cache_k", [past_k, k], axis=2)
    v = g.op("Concat", f"/{p}/attn/cache_v", [past_v, v], axis=2)
    scores = g.op("MatMul", f"/{p}/attn/scores", [q, g.op("Transpose", f"/{p}/attn/k_t", [k], perm=[0, 1, 3, 2])])
    probs = g.op("Softmax", f"/{p}/attn/softmax", [g.op("Add", f"/{p}/attn/bias", [scores, bias])], axis=-1)
    out = g.op("MatMul", f"/{p}/attn/context", [probs, v])  # (R, H, l, hd)
    out = g.op("Transpose", f"/{p}/attn/merge", [out], perm=[0, 2, 1, 3])
    out = g.op("Reshape", f"/{p}/attn/merge_heads", [out, g.const([0, 0, C])])
    return _linear(g, f"/{p}/attn/proj", out, w[f"{p}.attn.proj.weight"], w[f"{p}.attn.proj.bias"]), k, v


def _l2_normalize(g: GraphBuilder, name: str, x: ir.Value) -> ir.Value:
    """x / max(‖x‖₂, 1e-12) over the last axis (torch's F.normalize)."""
    norm = g.op("ReduceL2", name, [x, g.const([-1])], keepdims=1)
    norm = g.op("Max", f"{name}/eps", [norm, g.weight(f"{name}/eps_value", np.float32(1e-12))])
    return g.op("Div", f"{name}/div", [x, norm])


# =========================================================================== VQ-VAE decoder
def build_decoder(c: arch.VARConfig, w: dict[str, np.ndarray]) -> ir.Model:
    g = GraphBuilder()
    f_hat = g.input("f_hat", F32, ["batch", c.vae.z_channels, c.latent_size, c.latent_size])
    h = _conv(g, "post_quant_conv", f_hat, w, pad=1)
    for kind, name, cin, cout in arch.decoder_plan(c.vae):
        d = f"decoder.{name}"
        if kind == "conv_in":
            h = _conv(g, d, h, w, pad=1)
        elif kind == "res":
            h = _res_block(g, d, h, w, cin != cout)
        elif kind == "attn":
            h = _attn_block(g, d, h, w, cin)
        elif kind == "up":
            h = g.op("Resize", f"/{d}/nearest", [h, None, g.weight(f"/{d}/scales", np.array([1, 1, 2, 2], np.float32))],
                     mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
            h = _conv(g, f"{d}.conv", h, w, pad=1)
        else:
            h = _conv(g, "decoder.conv_out", _silu(g, "/decoder/out", _group_norm(g, "decoder.norm_out", h, w)), w, pad=1)
    h = g.op("Min", "/image/clamp_hi", [h, g.weight("/image/hi", np.float32(1))])
    h = g.op("Max", "/image/clamp_lo", [h, g.weight("/image/lo", np.float32(-1))])
    h = g.op("Mul", "/image/scale", [g.op("Add", "/image/shift", [h, g.weight("/image/one", np.float32(1))]),
                                     g.weight("/image/half", np.float32(0.5))])
    image = g.op("Transpose", "/image/nhwc", [h], perm=[0, 2, 3, 1])
    g.output(image, "image", F32, ["batch", c.image_size, c.image_size, 3])
    return g.model("VAR VQ-VAE decoder: f_hat → image in [0, 1], NHWC")


def _conv(g: GraphBuilder, name: str, x: ir.Value, w: dict[str, np.ndarray], pad: int = 0) -> ir.Value:
    return g.op("Conv", f"/{name}", [x, g.weight(f"{name}.weight", w[f"{name}.weight"]),
                                     g.weight(f"{name}.bias", w[f"{name}.bias"])], pads=[pad] * 4)


def _silu(g: GraphBuilder, name: str, x: ir.Value) -> ir.Value:
    return g.op("Mul", f"{name}/silu", [x, g.op("Sigmoid", f"{name}/silu", [x])])


def _group_norm(g: GraphBuilder, name: str, x: ir.Value, w: dict[str, np.ndarray], groups: int = 32) -> ir.Value:
    """GroupNorm(32, eps 1e-6) as InstanceNormalization over (B, groups, rest), then the affine."""
    channels = w[f"{name}.weight"].shape[0]
    shape = g.op("Shape", f"/{name}/shape", [x])
    y = g.op("Reshape", f"/{name}/groups", [x, g.const([0, groups, -1])])
    y = g.op("InstanceNormalization", f"/{name}", [y, g.weight(f"/{name}/ones", np.ones(groups, np.float32)),
                                                   g.weight(f"/{name}/zeros", np.zeros(groups, np.float32))],
             epsilon=1e-6)
    y = g.op("Reshape", f"/{name}/back", [y, shape])
    y = g.op("Mul", f"/{name}/gamma", [y, g.weight(f"{name}.weight", w[f"{name}.weight"].reshape(channels, 1, 1))])
    return g.op("Add", f"/{name}/beta", [y, g.weight(f"{name}.bias", w[f"{name}.bias"].reshape(channels, 1, 1))])


def _res_block(g: GraphBuilder, d: str, x: ir.Value, w: dict[str, np.ndarray], shortcut: bool) -> ir.Value:
    h = _conv(g, f"{d}.conv1", _silu(g, f"/{d}/act1", _group_norm(g, f"{d}.norm1", x, w)), w, pad=1)
    h = _conv(g, f"{d}.conv2", _silu(g, f"/{d}/act2", _group_norm(g, f"{d}.norm2", h, w)), w, pad=1)
    skip = _conv(g, f"{d}.nin_shortcut", x, w) if shortcut else x
    return g.op("Add", f"/{d}/residual", [skip, h])


def _attn_block(g: GraphBuilder, d: str, x: ir.Value, w: dict[str, np.ndarray], C: int) -> ir.Value:
    """Single-head attention over the h·w positions, 1×1-conv projections, scale C^-½."""
    qkv = _conv(g, f"{d}.qkv", _group_norm(g, f"{d}.norm", x, w), w)
    shape = g.op("Shape", f"/{d}/shape", [x])
    qkv = g.op("Reshape", f"/{d}/flat", [qkv, g.const([0, 3, C, -1])])  # (B, 3, C, HW)
    q, k, v = (g.op("Squeeze", f"/{d}/{n}", [t, g.const([1])])
               for n, t in zip("qkv", g.ops("Split", f"/{d}/split", [qkv], 3, axis=1, num_outputs=3)))
    scores = g.op("MatMul", f"/{d}/scores", [g.op("Transpose", f"/{d}/q_t", [q], perm=[0, 2, 1]), k])
    scores = g.op("Mul", f"/{d}/scale", [scores, g.weight(f"/{d}/scale_value", np.float32(C ** -0.5))])
    probs = g.op("Softmax", f"/{d}/softmax", [scores], axis=-1)  # (B, HWq, HWk)
    out = g.op("MatMul", f"/{d}/context", [v, g.op("Transpose", f"/{d}/p_t", [probs], perm=[0, 2, 1])])
    out = g.op("Reshape", f"/{d}/unflat", [out, shape])
    return g.op("Add", f"/{d}/residual", [x, _conv(g, f"{d}.proj_out", out, w)])
