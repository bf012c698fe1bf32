"""Find models by name: converted folders, Hugging Face sources, and the models bundled with
edgegen (converted once into the user's cache, then reused). Below the API: `edgegen.load(name)`
resolves names here."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from edgegen.core.errors import ConfigError
from edgegen.core.manifest import FORMAT_VERSION, MANIFEST_NAME

DEFAULT_MODEL = "tiny-chat"
BUNDLED = Path(__file__).parent / "_bundled"


def bundled_models() -> list[str]:
    return sorted(p.name for p in BUNDLED.iterdir() if (p / "config.json").is_file()) if BUNDLED.is_dir() else []


def cache_dir() -> Path:
    root = os.environ.get("EDGEGEN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "edgegen")
    return Path(root)


def default_runtime() -> str:
    """MLX on Apple silicon, ONNX Runtime elsewhere."""
    return "mlx" if sys.platform == "darwin" and platform.machine() == "arm64" else "onnx"


def source_path(src: str) -> str:
    """A bundled model's folder for its name; anything else unchanged."""
    if not Path(src).expanduser().exists() and src in bundled_models():
        return str(BUNDLED / src)
    return src


def convert_source(src: str, out: Path, **options: Any) -> Path:
    from edgegen.converters.convert import convert

    return convert(source_path(src), out, **options)


def is_converted(path: str | Path) -> bool:
    return (Path(path).expanduser() / MANIFEST_NAME).is_file()


def _is_current(folder: Path) -> bool:
    """A cached conversion this edgegen can still load (its manifest's format is the current one)."""
    try:
        return json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8")).get("format_version") == FORMAT_VERSION
    except (OSError, ValueError, AttributeError):
        return False


STAMP = "edgegen.source.json"  # beside a cached conversion: what its source looked like


def _source_stamp(folder: Path) -> str:
    """Names and sizes of every file of a local source: a changed source is converted again."""
    files = sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*") if p.is_file())
    return hashlib.sha256(json.dumps(files).encode()).hexdigest()


def _read_stamp(folder: Path) -> str | None:
    try:
        return json.loads((folder / STAMP).read_text(encoding="utf-8"))["source"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def locate(model: str | None, runtime: str | None = None, quant: str = "none") -> Path:
    """The converted folder for `model`, converting it (with `quant` weights) into the cache on
    first use, and again when the cached copy was written by an older edgegen."""
    model = model or DEFAULT_MODEL
    if is_converted(model) and quant == "none":
        return Path(model).expanduser()
    runtime = runtime or default_runtime()
    src = source_path(model)
    if src == model and model == DEFAULT_MODEL and not Path(model).exists():
        raise ConfigError(f"the bundled model {DEFAULT_MODEL!r} is not in this installation; "
                          "pass a converted model folder or a Hugging Face repo id")
    slug = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in model.strip("/"))[-60:]
    digest = hashlib.sha256(str(Path(src).expanduser().resolve() if Path(src).exists() else src).encode()).hexdigest()
    suffix = "" if quant == "none" else f"-{quant}"
    out = cache_dir() / "converted" / f"{slug}-{digest[:8]}-{runtime}{suffix}"
    stamp = _source_stamp(Path(src).expanduser()) if Path(src).expanduser().is_dir() else src
    if not _is_current(out) or _read_stamp(out) != stamp:
        convert_source(model, out, runtime=runtime, quant=quant, force=True)
        (out / STAMP).write_text(json.dumps({"source": stamp}), encoding="utf-8")
        print(f"edgegen: converted {model} for {runtime}{suffix} into {out} (kept for next time)", file=sys.stderr)
    return out
