"""The VAR benchmark's model: a VAR-d16-shaped transformer (16 blocks, width 1024, 16 heads,
V 4096) and the vae_ch160v4096z32-shaped VQ-VAE decoder with random weights (cost does not depend
on values), built with the PyTorch reference of the tests and saved once as safetensors."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

CACHE_ROOT = Path(os.environ.get("EDGEGEN_BENCH_CACHE", Path.home() / ".cache" / "edgegen-bench"))
DONE = ".complete"


def shapes(depth: int) -> tuple[dict, dict]:
    """(VAR kwargs, VQ-VAE kwargs) of the released family at `depth` (width 64·depth, heads = depth)."""
    var = dict(depth=depth, C=64 * depth, H=depth, V=4096, Cvae=32, num_classes=1000)
    vae = dict(V=4096, Cvae=32, ch=160, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2)
    return var, vae


def build_models(depth: int, seed: int = 0):
    import torch

    from var_reference import VAR, VQVAE, randomize

    var_args, vae_args = shapes(depth)
    torch.manual_seed(seed)
    var = randomize(VAR(**var_args), std=0.02, seed=seed).eval()
    vae = randomize(VQVAE(**vae_args), std=0.02, seed=seed + 1).eval()
    return var, vae


def checkpoint(depth: int, models=None) -> Path:
    """The checkpoint folder (var.safetensors + vae.safetensors without the encoder), built once."""
    from safetensors.torch import save_file

    folder = CACHE_ROOT / f"var-d{depth}-random"
    if (folder / DONE).is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    var, vae = models or build_models(depth)
    save_file({k: v.contiguous() for k, v in var.state_dict().items()}, str(folder / "var.safetensors"))
    save_file({k: v.contiguous() for k, v in vae.state_dict().items() if not k.startswith("encoder.")},
              str(folder / "vae.safetensors"))
    (folder / DONE).write_text("ok\n")
    return folder


def torch_seconds(var, vae, label: int, cfg: float, top_k: int, top_p: float, seed: int) -> dict:
    """One image with the PyTorch reference (eager, fp32): {"transformer": s, "decoder": s}."""
    import torch

    from var_reference import run_scales

    g = torch.Generator().manual_seed(seed)

    def pick(si, logits):
        kth = logits.topk(top_k, -1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -torch.inf)
        ranked, order = logits.sort(-1)
        drop = ranked.softmax(-1).cumsum(-1) <= 1 - top_p
        drop[..., -1:] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), -torch.inf)
        probs = logits.softmax(-1)
        return torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=g).view(probs.shape[:2])

    timing: dict = {}
    start = time.perf_counter()
    run_scales(var, vae, [label], cfg, pick=pick, timing=timing)
    timing["total"] = time.perf_counter() - start
    return timing


def edgegen_seconds(folder: Path, label: int, cfg: float, top_k: int, top_p: float, seed: int,
                    threads: int | None) -> dict:
    """One image through `edgegen.load(folder).generate`: load, transformer and decoder seconds."""
    import edgegen

    start = time.perf_counter()
    model = edgegen.load(folder, threads=threads)
    loaded = time.perf_counter() - start
    result = model.generate(label, cfg=cfg, top_k=top_k, top_p=top_p, seed=seed)
    stats = result.stats()
    return {"load": loaded, "transformer": stats["transformer_s"], "decoder": stats["decoder_s"],
            "total": stats["total_s"], "scales": stats["scales_s"],
            "image_mean": float(np.mean(result.images))}
