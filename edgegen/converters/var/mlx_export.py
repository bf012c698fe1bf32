"""Write the MLX side of a VAR model: FoundationVision's tensors renamed onto the module tree of
`edgegen.runtimes.mlx.var` (convolutions OIHW → OHWI, the §1.6 folds applied), cast to the chosen
dtype (the logits head stays fp32) and optionally quantized with MLX's affine quantization."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from edgegen.archs import _var as arch
from edgegen.core.manifest import Quantization
from edgegen.runtimes.mlx.backend import MX_DTYPES, import_mlx
from edgegen.runtimes.mlx.var import WEIGHTS, build, quantize

FP32_ALWAYS = ("head.", "head_ada.")


def transformer_weights(c: arch.VARConfig, w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    C, D = c.embed_dim, c.depth
    out: dict[str, np.ndarray] = {"head.weight": w["head.weight"], "head.bias": w["head.bias"]}
    if c.shared_aln:
        out.update({"shared_ada.weight": w["shared_ada_lin.1.weight"], "shared_ada.bias": w["shared_ada_lin.1.bias"],
                    "ada_gss": np.stack([w[f"blocks.{i}.ada_gss"].reshape(6 * C) for i in range(D)]),
                    "head_ada.weight": w["head_nm.ada_lin.1.weight"], "head_ada.bias": w["head_nm.ada_lin.1.bias"]})
    else:
        names = [f"blocks.{i}.ada_lin.1" for i in range(D)] + ["head_nm.ada_lin.1"]
        out["ada.weight"] = np.concatenate([w[n + ".weight"] for n in names])
        out["ada.bias"] = np.concatenate([w[n + ".bias"] for n in names])
    for i in range(D):
        p = f"blocks.{i}"
        if c.attn_l2_norm:
            scale = np.exp(np.minimum(w[f"{p}.attn.scale_mul_1H11"][0], math.log(100.0)))
        else:
            scale = np.full((c.num_heads, 1, 1), 0.25 / math.sqrt(c.head_dim))
        out.update({f"{p}.qkv.weight": w[f"{p}.attn.mat_qkv.weight"],
                    f"{p}.qkv.bias": np.concatenate([w[f"{p}.attn.q_bias"], np.zeros(C, np.float32),
                                                     w[f"{p}.attn.v_bias"]]),
                    f"{p}.scale_mul": scale.astype(np.float32)})
        for ours, theirs in (("proj", "attn.proj"), ("fc1", "ffn.fc1"), ("fc2", "ffn.fc2")):
            out[f"{p}.{ours}.weight"], out[f"{p}.{ours}.bias"] = w[f"{p}.{theirs}.weight"], w[f"{p}.{theirs}.bias"]
    return out


def decoder_weights(c: arch.VARConfig, w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}

    def take(ours: str, theirs: str) -> None:
        for suffix in ("weight", "bias"):
            t = w[f"{theirs}.{suffix}"]
            out[f"{ours}.{suffix}"] = t.transpose(0, 2, 3, 1) if t.ndim == 4 else t

    take("post_quant_conv", "post_quant_conv")
    parts = {"res": ("norm1", "conv1", "norm2", "conv2", "nin_shortcut"), "attn": ("norm", "qkv", "proj_out"),
             "up": ("conv",)}
    for j, (kind, name, cin, cout) in enumerate(arch.decoder_plan(c.vae)):
        if kind == "conv_in":
            take(f"layers.{j}", "decoder.conv_in")
        elif kind == "out":
            take(f"layers.{j}.norm_out", "decoder.norm_out")
            take(f"layers.{j}.conv_out", "decoder.conv_out")
        else:
            for part in parts[kind]:
                if f"decoder.{name}.{part}.weight" in w:
                    take(f"layers.{j}.{part}", f"decoder.{name}.{part}")
    return out


def export_mlx(c: arch.VARConfig, var: dict[str, np.ndarray], vae: dict[str, np.ndarray], out: Path, dtype: str,
               quant: Quantization) -> dict[str, str]:
    mx = import_mlx()
    from mlx.utils import tree_flatten

    transformer, decoder = build(c)
    target = getattr(mx, MX_DTYPES[dtype])

    def cast(name: str, array: np.ndarray):
        return mx.array(array).astype(mx.float32 if name.startswith(FP32_ALWAYS) else target)

    transformer.load_weights([(k, cast(k, v)) for k, v in transformer_weights(c, var).items()], strict=True)
    decoder.load_weights([(k, cast(k, v)) for k, v in decoder_weights(c, vae).items()], strict=True)
    if quant.bits:
        quantize(transformer, quant)
    params = {f"transformer.{k}": v for k, v in tree_flatten(transformer.parameters())}
    params.update({f"decoder.{k}": v for k, v in tree_flatten(decoder.parameters())})
    mx.eval(params)
    mx.save_safetensors(str(out / WEIGHTS), params, metadata={"format": "mlx"})
    return {"weights": WEIGHTS}
