"""Find and read a VAR checkpoint folder: the transformer (`var*.safetensors` / `var*.pth`) and the
multi-scale VQ-VAE (`vae*.safetensors` / `vae*.pth`), plus an optional config.json.

safetensors are read directly. `.pth` files (the released `var_d16.pth`, `vae_ch160v4096z32.pth`)
need PyTorch (the `pth` extra) and are opened with `torch.load(weights_only=True)` only: a pickle
that holds anything but tensors is refused, never executed.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.archs import _var as arch
from edgegen.archs._checks import MAX_SIZE, bad_value, config_int, is_whole
from edgegen.core.errors import ConfigError, ConversionError

SUFFIXES = (".safetensors", ".pth", ".pt")


@dataclasses.dataclass
class VarCheckpoint:
    folder: Path
    config: arch.VARConfig
    var: dict[str, np.ndarray]  # float32, upstream names, buffers dropped
    vae: dict[str, np.ndarray]
    files: list[Path]
    extra: dict[str, Any]  # config.json as read (class names, ...), {} without one


def find_files(folder: Path) -> tuple[Path, Path] | None:
    """(transformer file, VQ-VAE file) when `folder` holds exactly one of each, else None."""
    found = {}
    for prefix in ("var", "vae"):
        hits = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in SUFFIXES
                      and p.name.lower().startswith(prefix))
        safetensors = [p for p in hits if p.suffix == ".safetensors"]
        hits = safetensors or hits  # the same weights in both formats: prefer safetensors
        if len(hits) != 1:
            return None
        found[prefix] = hits[0]
    return found["var"], found["vae"]


def read_config_json(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc})") from None
    return raw if isinstance(raw, dict) else {}


def open_var_checkpoint(folder: Path) -> VarCheckpoint:
    files = find_files(folder)
    if files is None:
        raise ConversionError(f"{folder} needs exactly one var*.safetensors|.pth (the transformer) and one "
                              "vae*.safetensors|.pth (the VQ-VAE)")
    extra = read_config_json(folder)
    heads = config_int(extra, "num_heads", None)  # checked before the weights are read
    patch_nums = extra.get("patch_nums")
    if patch_nums is not None and not (isinstance(patch_nums, list) and all(
            is_whole(side) and 1 <= side <= MAX_SIZE for side in patch_nums)):
        raise bad_value("patch_nums", "a list of positive integers", patch_nums)
    var, vae = read_tensors(files[0]), read_tensors(files[1])
    lvl = var.get("lvl_1L")
    config = arch.infer_config({k: v.shape for k, v in var.items()}, {k: v.shape for k, v in vae.items()},
                               lvl_1L=lvl, num_heads=heads)
    if patch_nums is not None and tuple(patch_nums) != config.patch_nums:
        raise ConfigError(f"config.json says patch_nums {extra['patch_nums']} but the weights hold "
                          f"{list(config.patch_nums)}; fix config.json")
    var = _checked(var, arch.var_shapes(config), arch.var_ignored, files[0])
    vae = _checked(vae, arch.vae_shapes(config.vae), arch.vae_ignored, files[1])
    return VarCheckpoint(folder, config, var, vae, list(files), extra)


def _checked(tensors: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]], ignored, path: Path
             ) -> dict[str, np.ndarray]:
    """float32 copies of the expected tensors; a one-line error for a missing, misshapen or unknown one."""
    missing = [n for n in expected if n not in tensors]
    unknown = [n for n in tensors if n not in expected and not ignored(n)]
    for names, what in ((missing, "lacks"), (unknown, "has unexpected tensors")):
        if names:
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            raise ConversionError(f"{path.name} {what} {', '.join(names[:3])}{more}; is it a FoundationVision VAR "
                                  "checkpoint of this kind, complete and unmodified?")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != tuple(shape):
            raise ConversionError(f"{path.name}: {name} has shape {tuple(tensors[name].shape)}, expected "
                                  f"{tuple(shape)}; the checkpoint is inconsistent")
    return {name: np.asarray(tensors[name], dtype=np.float32) for name in expected}


def read_tensors(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".safetensors":
        from edgegen.converters.checkpoint import _read_safetensors

        return dict(_read_safetensors(path))
    return _read_pth(path)


def _read_pth(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ConversionError(f"reading {path.name} needs PyTorch: `pip install 'edgegen[pth]'`, or save the "
                              "checkpoint as safetensors") from None
    import warnings

    try:
        with warnings.catch_warnings():  # torch warns at length before refusing a pickle; the refusal is ours
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for anything but tensors; RuntimeError for a broken zip
        first = " ".join(str(exc).split())[:160]
        raise ConversionError(f"{path.name} is not a weights-only PyTorch checkpoint ({first}); edgegen never "
                              "unpickles arbitrary objects: save the state dict alone, or as safetensors") from None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{path.name} is not a state dict (a mapping of names to tensors); save "
                              "`model.state_dict()`")
    return {name: t.detach().float().numpy() if t.is_floating_point() else t.numpy() for name, t in state.items()}


def host_tensors(ckpt: VarCheckpoint) -> dict[str, np.ndarray]:
    """The small tensors the host side of both runtimes uses (float32): embeddings with the level
    and position tables folded into one (L, C) table, the codebook and the Φ convs."""
    c, w, v = ckpt.config, ckpt.var, ckpt.vae
    levels = np.repeat(np.arange(len(c.patch_nums)), [p * p for p in c.patch_nums])
    phi = [arch.PHI_LAYOUTS[c.vae.phi_layout].format(i=i) for i in range(c.vae.phi_count)]
    return {"class_emb": w["class_emb.weight"], "pos_start": w["pos_start"][0],
            "lvl_pos": w["lvl_embed.weight"][levels] + w["pos_1LC"][0],
            "word_embed.weight": w["word_embed.weight"], "word_embed.bias": w["word_embed.bias"],
            "codebook": v["quantize.embedding.weight"],
            "phi.weight": np.stack([v[p + ".weight"] for p in phi]), "phi.bias": np.stack([v[p + ".bias"] for p in phi])}
