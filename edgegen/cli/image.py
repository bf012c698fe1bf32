"""`edgegen image`: class-conditional image generation with a VAR model."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import click

from edgegen.cli._app import main

DEFAULT_IMAGE_MODEL = "tiny-var"


def output_path(out: Path, i: int, count: int, as_grid: bool) -> Path:
    """Image i's path (from 0): OUT itself for one image or a grid, else OUT-1.png, OUT-2.png, ..."""
    if count == 1 or as_grid:
        return out
    return out.with_name(f"{out.stem}-{i + 1}{out.suffix or '.png'}")


def check_outputs(out: Path, count: int, as_grid: bool, force: bool) -> Path:
    """Refuse now (one line) any of the `count` outputs that may not be written, in time that does
    not grow with `count`: OUT for one image or a grid, else the numbered files already there (a
    listing of OUT's folder). Returns OUT resolved."""
    from edgegen.core.outputs import check_output
    from edgegen.images import is_edgegen_png

    if count == 1 or as_grid:
        return check_output(out, force=force, ours=is_edgegen_png)
    out = check_output(output_path(out, 0, count, as_grid), force=force, ours=is_edgegen_png).with_name(out.name)
    if out.parent.is_dir():  # (OUT itself is not written: an image already there is no obstacle)
        pattern = re.compile(re.escape(out.stem) + r"-([1-9][0-9]*)" + re.escape(out.suffix or ".png"))
        for entry in out.parent.iterdir():
            match = pattern.fullmatch(entry.name)
            if match and int(match.group(1)) <= count:
                check_output(entry, force=force, ours=is_edgegen_png)
    return out


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
@click.option("--batch-size", default=None, type=click.IntRange(min=1),
              help="Images generated at once (default: as many as fit in half the free memory, at most 32).")
@click.option("--provider", default=None, help="ONNX Runtime provider: cpu, coreml, qnn, dml, cuda, auto.")
@click.option("--device", default=None, help="MLX device: gpu (Metal), cpu, auto.")
@click.option("--runtime", type=click.Choice(["onnx", "mlx"]), default=None,
              help="Runtime to convert to when MODEL is not converted yet.")
def image(model: str | None, classes: tuple[str, ...], out: Path, n: int, as_grid: bool, cfg: float, top_k: int,
          top_p: float, seed: int | None, as_json: bool, force: bool, batch_size: int | None, provider: str | None,
          device: str | None, runtime: str | None) -> None:
    """Generate images of a class with MODEL (a converted VAR folder or any VAR source; default: the
    bundled tiny-var, digits 0-9). Images are made in batches and each file is written as its
    batch ends (Ctrl-C keeps them); progress and the time split go to stderr."""
    from tqdm import tqdm

    from edgegen.api import load
    from edgegen.core.errors import ConfigError
    from edgegen.decoding.next_scale import ScaleSampling, ScaleTiming
    from edgegen.images import ImageModel, timing_stats

    if n < 1:
        raise ConfigError(f"-n must be at least 1, not {n}")
    ScaleSampling(cfg=cfg, top_k=top_k, top_p=top_p, seed=seed).validated()
    wanted = len(classes) * n if classes else n
    out = check_outputs(out, wanted, as_grid, force)
    loaded = load(model or DEFAULT_IMAGE_MODEL, provider, device=device, runtime=runtime)
    if not isinstance(loaded, ImageModel):
        raise ConfigError(f"{model} is not an image model (family {loaded.manifest.family!r}); "
                          "`edgegen image` needs a VAR model")
    labels: list[Any] = list(classes) or [int(i) for i in _random_classes(loaded.num_classes, seed)]
    size = loaded.batch_size(wanted, cfg > 0, batch_size)
    sink = _GridSink(out, len(labels), n, loaded.image_size) if as_grid else _FileSink(out, wanted, force)
    sides = loaded.model.patch_nums
    progress = None if as_json or size < wanted else (lambda k, count, secs: click.echo(
        f"scale {k + 1}/{count}  {sides[k]}×{sides[k]} tokens  {secs:.2f} s", err=True))
    described = lambda c: (f"class {c}" + (f" ({loaded.class_names[c]})" if loaded.class_names else "")  # noqa: E731
                           + f", cfg {cfg:g}, top-k {top_k}, top-p {top_p:g}, seed {seed}")
    timing, class_ids, count = ScaleTiming(), [], 0
    with tqdm(total=wanted, desc="images", unit="img", leave=False, disable=None if size < wanted else True) as bar:
        for batch in loaded.generate_batches(labels, n=n, cfg=cfg, top_k=top_k, top_p=top_p, seed=seed,
                                             on_scale=progress, batch_size=size):
            sink.add(batch.images, [described(c) for c in batch.class_ids])
            count += len(batch.class_ids)
            if as_json:  # (the JSON lists every image; otherwise nothing grows with -n)
                class_ids += batch.class_ids
            timing.decoder += batch.timing.decoder
            for k, secs in enumerate(batch.timing.scales):
                timing.add_scale(k, secs)
            bar.update(len(batch.class_ids))
    sink.close()
    total = timing.total
    paths = (output_path(out, i, wanted, as_grid) for i in range(1 if as_grid else count))
    if as_json:
        stats = {**timing_stats(timing, count), "batch_size": size}
        click.echo(json.dumps({"model": str(loaded.folder), "files": [str(p) for p in paths],
                               "classes": class_ids, "cfg": cfg, "top_k": top_k, "top_p": top_p,
                               "seed": seed, "size": loaded.image_size, "timing": stats}))
        return
    files = 1 if as_grid else count
    for path in itertools.islice(paths, 10):
        click.echo(f"wrote {path}", err=True)
    if files > 10:
        click.echo(f"... and {files - 10:,} more, to {output_path(out, files - 1, wanted, as_grid)}", err=True)
    click.echo(f"{count} image(s) {loaded.image_size}×{loaded.image_size}: {total / count:.2f} s per image "
               f"(transformer {timing.transformer / count:.2f} s + decoder {timing.decoder / count:.2f} s)"
               + (f", in batches of {size}" if size < count else ""), err=True)


class _FileSink:
    """Numbered PNGs, each written (atomically) as soon as its batch ends; each path is checked as
    it comes (a file put there while the run went on is refused, not replaced)."""

    def __init__(self, out: Path, count: int, force: bool):
        self.out, self.count, self.force, self.done = out, count, force, 0

    def add(self, images: Any, descriptions: list[str]) -> None:
        from edgegen.core.outputs import check_output
        from edgegen.images import is_edgegen_png, save_png

        for image_, text in zip(images, descriptions):
            path = output_path(self.out, self.done, self.count, False)
            save_png(image_, check_output(path, force=self.force, ours=is_edgegen_png), text)
            self.done += 1

    def close(self) -> None:
        pass


class _GridSink:
    """One grid PNG, a row per class: cells are filled as batches end, the file written at the end."""

    def __init__(self, path: Path, rows: int, columns: int, side: int):
        import numpy as np

        from edgegen.core.memory import check_fits
        from edgegen.images import GRID_GAP

        self.path, self.columns, self.side, self.done = path, columns, side, 0
        height, width = rows * (side + GRID_GAP) - GRID_GAP, columns * (side + GRID_GAP) - GRID_GAP
        check_fits(2 * height * width * 3, f"a grid of {rows}×{columns} images ({width}×{height} pixels)",
                   "drop --grid to write numbered files, or ask for fewer images")
        self.canvas = np.full((height, width, 3), 255, np.uint8)
        self.descriptions: set[str] = set()

    def add(self, images: Any, descriptions: list[str]) -> None:
        from edgegen.images import GRID_GAP

        step = self.side + GRID_GAP
        for image_ in images:
            r, c = divmod(self.done, self.columns)
            self.canvas[r * step: r * step + self.side, c * step: c * step + self.side] = image_
            self.done += 1
        self.descriptions.update(descriptions)

    def close(self) -> None:
        from edgegen.images import save_png

        save_png(self.canvas, self.path, "; ".join(sorted(self.descriptions)))


def _random_classes(num_classes: int, seed: int | None):
    import numpy as np

    return np.random.default_rng(None if seed is None else seed + 1).integers(0, num_classes, size=1)
