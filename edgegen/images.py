"""The Python API of image models (the `var` family): `edgegen.load(path)` returns an `ImageModel`."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_image_model(folder: Path, manifest: Any, provider: str | None = None, *, device: str | None = None,
                     threads: int | None = None) -> Any:
    raise NotImplementedError
