"""The Python API of image models (the `var` family): `edgegen.load(path)` returns an `ImageModel`.

    model = edgegen.load("tiny-var")
    result = model.generate(3, n=4, cfg=4, seed=0)   # 4 images of class 3
    result.images                                    # (4, 32, 32, 3) uint8
    result.pil()[0].save("three.png")                # or edgegen.images.save_png(...)
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from edgegen.archs import _var as arch
from edgegen.core.errors import ConfigError
from edgegen.core.memory import available_bytes, check_fits
from edgegen.core.manifest import Manifest
from edgegen.decoding.next_scale import OnScale, ScaleSampling, ScaleTiming, generate_scales

__all__ = ["ImageGeneration", "ImageModel", "ScaleSampling", "load_image_model", "save_png", "is_edgegen_png"]

SOFTWARE = "edgegen"  # the PNG tEXt "Software" value that marks files edgegen wrote
MAX_BATCH = 32  # images per batch by default: larger batches gain little on CPUs and cost memory


@dataclasses.dataclass
class ImageGeneration:
    images: np.ndarray  # (n, H, W, 3) uint8
    class_ids: list[int]
    tokens: list[np.ndarray]  # per scale, (n, side²)
    timing: ScaleTiming
    sampling: ScaleSampling

    def pil(self) -> list[Any]:
        """The images as PIL images (RGB)."""
        from PIL import Image

        return [Image.fromarray(image, "RGB") for image in self.images]

    def stats(self) -> dict[str, Any]:
        return timing_stats(self.timing, len(self.class_ids))


def timing_stats(t: ScaleTiming, images: int) -> dict[str, Any]:
    """Seconds of a run of `images` images, as `--json` and the API report them."""
    return {"images": images, "transformer_s": round(t.transformer, 4), "decoder_s": round(t.decoder, 4),
            "total_s": round(t.total, 4), "seconds_per_image": round(t.total / images, 4),
            "scales_s": [round(s, 4) for s in t.scales]}


class ImageModel:
    """A converted class-conditional image model. Calls are serialized by a lock (one runtime
    session, reused), so one instance may be shared between threads."""

    def __init__(self, scale_ar: Any, manifest: Manifest, folder: Path | None = None):
        self.model, self.manifest, self.folder = scale_ar, manifest, folder
        self.config = scale_ar.config
        self.class_names: list[str] = list(manifest.config.get("class_names") or [])
        self._lock = threading.Lock()

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def image_size(self) -> int:
        return self.model.image_size

    def class_id(self, label: int | str) -> int:
        """A class id from an id or a class name."""
        if isinstance(label, bool) or not isinstance(label, (int, str, np.integer)):
            raise ConfigError(f"a class is an id or a name, got {label!r:.40}")
        if isinstance(label, str) and len(label) > 12 and label.lstrip("-").isdigit():  # (int() refuses 4,300 digits)
            raise ConfigError(f"class {label[:12]}… is out of range; this model has classes 0..{self.num_classes - 1}")
        if isinstance(label, str) and not label.lstrip("-").isdigit():
            if label in self.class_names:
                return self.class_names.index(label)
            raise ConfigError(f"unknown class {label!r}; give an id in 0..{self.num_classes - 1}"
                              + (f" or one of {', '.join(self.class_names[:12])}" if self.class_names else ""))
        value = int(label)
        if not 0 <= value < self.num_classes:
            raise ConfigError(f"class {value} is out of range; this model has classes 0..{self.num_classes - 1}")
        return value

    def generate(self, classes: int | str | Sequence[int | str], *, n: int = 1, cfg: float = 4.0, top_k: int = 900,
                 top_p: float = 0.95, seed: int | None = None, on_scale: OnScale | None = None,
                 batch_size: int | None = None) -> ImageGeneration:
        """`n` images of each class in `classes` (ids or names), run in batches (`batch_size`,
        default: as many as fit, at most MAX_BATCH) and returned together. For more images than
        memory holds at once, iterate `generate_batches` instead."""
        labels = self._labels(classes, n)
        side = self.image_size
        check_fits(len(labels) * n * (side * side * 3 + 8 * self.config.num_tokens),
                   f"{len(labels) * n:,} images at once",
                   "iterate model.generate_batches(...) (or `edgegen image`, which writes each batch as it ends)")
        ids = [label for label in labels for _ in range(n)]
        parts = list(self.generate_batches(classes, n=n, cfg=cfg, top_k=top_k, top_p=top_p, seed=seed,
                                           on_scale=on_scale, batch_size=batch_size))
        timing = ScaleTiming([sum(t) for t in zip(*(p.timing.scales for p in parts))],
                             sum(p.timing.decoder for p in parts))
        return ImageGeneration(np.concatenate([p.images for p in parts]), ids,
                               [np.concatenate(scale) for scale in zip(*(p.tokens for p in parts))], timing,
                               parts[0].sampling)

    def generate_batches(self, classes: int | str | Sequence[int | str], *, n: int = 1, cfg: float = 4.0,
                         top_k: int = 900, top_p: float = 0.95, seed: int | None = None,
                         on_scale: OnScale | None = None, batch_size: int | None = None) -> Iterator[ImageGeneration]:
        """The images of `generate`, one batch at a time, so memory holds one batch whatever `n`.
        With a seed, image i is the same whatever the batch size (it draws from (seed, i))."""
        labels = self._labels(classes, n)  # image i is of class labels[i // n]: no list of every image
        ScaleSampling(cfg=cfg, top_k=top_k, top_p=top_p, seed=seed).validated()  # (types too, before converting)
        sampling = ScaleSampling(cfg=float(cfg), top_k=int(top_k), top_p=float(top_p),
                                 seed=None if seed is None else int(seed))
        if sampling.seed is None:  # one seed for the whole run, so its images never repeat across batches
            sampling = dataclasses.replace(sampling, seed=int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> 1))
        count = len(labels) * n
        size = self.batch_size(count, sampling.cfg > 0, batch_size)
        for first in range(0, count, size):
            ids = [labels[i // n] for i in range(first, min(first + size, count))]
            timing = ScaleTiming()
            with self._lock:
                images, tokens = generate_scales(self.model, ids, sampling, on_scale, timing, first_image=first)
            pixels = np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)
            yield ImageGeneration(pixels, ids, tokens, timing, sampling)

    def batch_size(self, count: int, guided: bool = True, wanted: int | None = None) -> int:
        """Images per batch: `wanted`, or as many as half the available memory holds (at most
        MAX_BATCH); one line (OutOfMemory) when even `wanted` or one image does not fit."""
        if wanted is not None and (isinstance(wanted, bool) or not isinstance(wanted, int) or wanted < 1):
            raise ConfigError(f"the batch size must be a positive number of images, not {wanted!r}")
        each = arch.bytes_per_image(self.config, guided)
        have = available_bytes()
        fits = MAX_BATCH if have is None else max(have // 2 // each, 0)
        size = min(count, wanted or MAX_BATCH, max(fits, 1))
        check_fits(size * each, f"a batch of {size} image(s) of {self.image_size}×{self.image_size}",
                   "give a smaller batch size" if size > 1 else "close other programs or use a smaller model")
        return size

    def _labels(self, classes: int | str | Sequence[int | str], n: int) -> list[int]:
        """The class ids asked for, each once (`n` images of each are made)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"n must be a positive number of images, not {n!r}")
        labels = [classes] if isinstance(classes, (int, str, np.integer)) else classes
        if not isinstance(labels, (list, tuple, np.ndarray)) or not len(labels):
            raise ConfigError(f"classes must be a class (id or name) or a non-empty list of them, got {classes!r:.40}")
        return [self.class_id(label) for label in labels]

    def generate_tokens(self, classes: Sequence[int], tokens: Sequence[np.ndarray], cfg: float = 4.0):
        """Run the scales with the given tokens (no sampling): (guided logits per scale, images in
        [0, 1] float32). For tests and tools that compare runtimes token for token."""
        from edgegen.decoding.next_scale import guidance, mix

        with self._lock:
            run = self.model.start(list(classes), cfg > 0)
            K, logits = len(self.model.patch_nums), []
            for k in range(K):
                raw = run.logits()
                logits.append(mix(raw, guidance(k, K, cfg)) if cfg > 0 else raw)
                run.push(tokens[k])
            return logits, run.image()


def load_image_model(folder: Path, manifest: Any, provider: str | None = None, *, device: str | None = None,
                     threads: int | None = None) -> ImageModel:
    from edgegen.runtimes._var import VarModel, load_host

    config = arch.config_from_dict(manifest.config)
    if manifest.runtime == "onnx":
        from edgegen.runtimes.onnx.var import OnnxVarEngine

        engine: Any = OnnxVarEngine(folder, config, manifest.files, provider, threads)
    elif manifest.runtime == "mlx":
        from edgegen.runtimes.mlx.var import MLXVarEngine

        engine = MLXVarEngine(folder, config, manifest.dtype, manifest.quantization, device)
    else:
        raise ConfigError(f"{folder} targets runtime {manifest.runtime!r}, which this edgegen cannot run")
    return ImageModel(VarModel(config, load_host(folder), engine), manifest, folder)


# --------------------------------------------------------------------------- PNG files
def is_edgegen_png(path: Path) -> bool:
    """A PNG whose tEXt chunk says edgegen wrote it (what `--force` may replace)."""
    try:
        from PIL import Image

        with Image.open(path) as image:
            return image.format == "PNG" and image.text.get("Software") == SOFTWARE
    except Exception:  # not an image, unreadable, truncated: not ours
        return False


def save_png(image: np.ndarray, out: Path, description: str = "") -> None:
    """Write (H, W, 3) uint8 as a PNG marked as edgegen's, atomically (a temporary file renamed)."""
    from PIL import Image, PngImagePlugin

    from edgegen.core.outputs import atomic_file

    info = PngImagePlugin.PngInfo()
    info.add_text("Software", SOFTWARE)
    if description:
        info.add_text("Description", description)
    with atomic_file(Path(out)) as tmp:
        Image.fromarray(np.ascontiguousarray(image), "RGB").save(tmp, format="PNG", pnginfo=info)


GRID_GAP = 2  # white pixels between grid cells


def grid(images: np.ndarray, columns: int | None = None, gap: int = GRID_GAP) -> np.ndarray:
    """(n, H, W, 3) → one (rows·H, columns·W, 3) uint8 image, white gaps between cells."""
    n, H, W, _ = images.shape
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    out = np.full((rows * H + (rows - 1) * gap, columns * W + (columns - 1) * gap, 3), 255, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        out[r * (H + gap): r * (H + gap) + H, c * (W + gap): c * (W + gap) + W] = image
    return out
