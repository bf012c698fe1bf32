"""Visual autoregressive (VAR) checkpoints: detection and the writer `edgegen convert` calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def is_var_checkpoint(folder: Path) -> bool:
    """True when `folder` holds a VAR transformer + multi-scale VQ-VAE checkpoint."""
    return False


def write_var(source: Any, out: Path, options: Any) -> None:
    raise NotImplementedError
