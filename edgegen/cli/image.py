"""`edgegen image`: class-conditional image generation with a VAR model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from edgegen.cli._app import main

DEFAULT_IMAGE_MODEL = "tiny-var"


def output_paths(out: Path, count: int, as_grid: bool) -> list[Path]:
    """One path per image: OUT itself for one image or a grid, else OUT-1.png, OUT-2.png, ..."""
    if count == 1 or as_grid:
        return [out]
    stem, suffix = out.stem, out.suffix or ".png"
    return [out.with_name(f"{stem}-{i}{suffix}") for i in range(1, count + 1)]


@main.command()
@click.argument("model", required=False)
@click.option("-c", "--class", "classes", multiple=True,
              help="Class id or name (repeatable; default: one class drawn at random with the seed).")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="PNG to write; with -n > 1, OUT-1.png, OUT-2.png, ... (or one grid with --grid).")
@click.option("-n", "--num-images", "n", default=1, show_default=True, type=int, help="Images per class.")
@click.option("--grid", "as_grid", is_flag=True, help="Write all images as one grid PNG instead of numbered files.")
@click.option("--cfg", default=4.0, show_default=True, type=float,
              help="Classifier-free guidance at the last scale (ramped from 0); 0 turns it off.")
@click.option("--top-k", default=900, show_default=True, type=int, help="0 turns it off.")
@click.option("--top-p", default=0.95, show_default=True, type=float, help="1 turns it off.")
@click.option("--seed", default=None, type=int, help="Makes sampling reproducible.")
@click.option("--json", "as_json", is_flag=True, help="Print files, classes and timing as JSON.")
@click.option("--force", is_flag=True, help="Replace existing PNGs that edgegen wrote.")
@click.option("--provider", default=None, help="ONNX Runtime provider: cpu, coreml, qnn, dml, cuda, auto.")
@click.option("--device", default=None, help="MLX device: gpu (Metal), cpu, auto.")
@click.option("--runtime", type=click.Choice(["onnx", "mlx"]), default=None,
              help="Runtime to convert to when MODEL is not converted yet.")
def image(model: str | None, classes: tuple[str, ...], out: Path, n: int, as_grid: bool, cfg: float, top_k: int,
          top_p: float, seed: int | None, as_json: bool, force: bool, provider: str | None, device: str | None,
          runtime: str | None) -> None:
    """Generate images of a class with MODEL (a converted VAR folder or any VAR source; default: the
    bundled tiny-var, digits 0-9). Progress per scale and the time split go to stderr."""
    from edgegen.api import load
    from edgegen.core.errors import ConfigError
    from edgegen.core.outputs import check_output
    from edgegen.decoding.next_scale import ScaleSampling
    from edgegen.images import ImageModel, grid, is_edgegen_png, save_png

    if n < 1:
        raise ConfigError(f"-n must be at least 1, not {n}")
    ScaleSampling(cfg=cfg, top_k=top_k, top_p=top_p, seed=seed).validated()
    wanted = len(classes) * n if classes else n
    paths = [check_output(p, force=force, ours=is_edgegen_png) for p in output_paths(out, wanted, as_grid)]
    loaded = load(model or DEFAULT_IMAGE_MODEL, provider, device=device, runtime=runtime)
    if not isinstance(loaded, ImageModel):
        raise ConfigError(f"{model} is not an image model (family {loaded.manifest.family!r}); "
                          "`edgegen image` needs a VAR model")
    labels: list[Any] = list(classes) or [int(i) for i in _random_classes(loaded.num_classes, seed)]
    sides = loaded.model.patch_nums
    progress = None if as_json else (lambda k, count, secs: click.echo(
        f"scale {k + 1}/{count}  {sides[k]}×{sides[k]} tokens  {secs:.2f} s", err=True))
    result = loaded.generate(labels, n=n, cfg=cfg, top_k=top_k, top_p=top_p, seed=seed, on_scale=progress)
    described = [f"class {c}" + (f" ({loaded.class_names[c]})" if loaded.class_names else "")
                 + f", cfg {cfg:g}, top-k {top_k}, top-p {top_p:g}, seed {seed}" for c in result.class_ids]
    if as_grid:
        save_png(grid(result.images, columns=n), paths[0], "; ".join(sorted(set(described))))  # a row per class
    else:
        for image_, path, text in zip(result.images, paths, described):
            save_png(image_, path, text)
    stats = result.stats()
    if as_json:
        click.echo(json.dumps({"model": str(loaded.folder), "files": [str(p) for p in paths],
                               "classes": result.class_ids, "cfg": cfg, "top_k": top_k, "top_p": top_p,
                               "seed": seed, "size": loaded.image_size, "timing": stats}))
        return
    for path in paths:
        click.echo(f"wrote {path}", err=True)
    click.echo(f"{stats['images']} image(s) {loaded.image_size}×{loaded.image_size}: "
               f"{stats['seconds_per_image']:.2f} s per image (transformer {stats['transformer_s'] / stats['images']:.2f} s"
               f" + decoder {stats['decoder_s'] / stats['images']:.2f} s)", err=True)


def _random_classes(num_classes: int, seed: int | None):
    import numpy as np

    return np.random.default_rng(None if seed is None else seed + 1).integers(0, num_classes, size=1)
