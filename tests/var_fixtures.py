"""Tiny random VAR checkpoints for the tests: the reference models of var_reference.py with every
weight ~ N(0, 0.3), saved with FoundationVision's names, and converted through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from var_reference import VAR, VQVAE, randomize

# depth 2, C 64, 4 heads, V 64, Cvae 8 over the full 256-px schedule (1..16, non-divisor resampling);
# a small decoder (ch 32, two levels, attention at the lowest) keeps the image 32×32.
VARIANTS = {
    "l2norm": dict(l2_norm=True, shared_aln=False),
    "plain-shared": dict(l2_norm=False, shared_aln=True),
}
VAE_ARGS = dict(V=64, Cvae=8, ch=32, ch_mult=(1, 2), num_res_blocks=1)


def build_reference(variant: str = "l2norm", seed: int = 0) -> tuple[VAR, VQVAE]:
    var = randomize(VAR(depth=2, C=64, H=4, V=64, Cvae=8, num_classes=10, **VARIANTS[variant]), 0.3, seed)
    vae = randomize(VQVAE(**VAE_ARGS), 0.3, seed + 1)
    return var.eval(), vae.eval()


def save_checkpoint(var: VAR, vae: VQVAE, folder: Path, fmt: str = "safetensors") -> Path:
    """Upstream's file names; a config.json only where the weights cannot tell the head count
    (without q/k normalisation there is no per-head scale; upstream's rule is heads = depth)."""
    folder.mkdir(parents=True, exist_ok=True)
    if not hasattr(var.blocks[0].attn, "scale_mul_1H11"):
        heads = var.blocks[0].attn.H
        (folder / "config.json").write_text(json.dumps({"model_type": "var", "num_heads": heads}), encoding="utf-8")
    for name, module in (("var", var), ("vae", vae)):
        state = {k: v.contiguous() for k, v in module.state_dict().items()}
        if fmt == "safetensors":
            save_file(state, str(folder / f"{name}.safetensors"))
        else:
            torch.save(state, folder / f"{name}.pth")
    return folder


def convert_cli(src: Path, out: Path, *args: str) -> Path:
    from edgegen.cli import main

    result = CliRunner().invoke(main, ["convert", str(src), "-o", str(out), *args])
    assert result.exit_code == 0, result.output
    return out
