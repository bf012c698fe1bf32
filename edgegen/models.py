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


def is_mlx_lm(path: str | Path) -> bool:
    """A folder mlx-lm wrote (`mlx_lm.convert`, mlx-community's models): config.json with mlx-lm's
    `quantization` entry, or safetensors marked format "mlx"; edgegen runs it as it is."""
    folder = Path(path).expanduser()
    if is_converted(folder) or not (folder / "config.json").is_file():
        return False
    try:
        if "quantization" in json.loads((folder / "config.json").read_text(encoding="utf-8")):
            return True
        first = next(iter(sorted(folder.glob("*.safetensors"))), None)
        if first is None:
            return False
        with open(first, "rb") as f:  # the header: 8 bytes of length, then JSON with __metadata__
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(min(size, 2**24)))
        return header.get("__metadata__", {}).get("format") == "mlx"
    except (OSError, ValueError, AttributeError):
        return False


def is_genai(path: str | Path) -> bool:
    """A folder onnxruntime-genai's model builder wrote: genai_config.json beside its graph."""
    folder = Path(path).expanduser()
    return not is_converted(folder) and (folder / "genai_config.json").is_file()


def is_foreign(path: str | Path) -> bool:
    """A peer's folder that edgegen runs as it is (mlx-lm, onnxruntime-genai)."""
    return is_mlx_lm(path) or is_genai(path)


def read_manifest(folder: str | Path):
    """The manifest of a converted folder, or one made for an mlx-lm or onnxruntime-genai folder."""
    from edgegen.core.manifest import Manifest

    if is_mlx_lm(folder):
        return mlx_lm_manifest(Path(folder).expanduser())
    if is_genai(folder):
        return genai_manifest(Path(folder).expanduser())
    return Manifest.read(folder)


def _cached_foreign(model: str) -> Path | None:
    """The snapshot folder of hub id `model` when it is an mlx-lm model (fetched, or from the
    Hugging Face cache offline); None for anything else."""
    if Path(model).expanduser().exists() or model.count("/") != 1 or model in bundled_models():
        return None
    from huggingface_hub import snapshot_download

    from edgegen.converters.hub import ALLOW_PATTERNS, resolve
    from edgegen.core.errors import ConversionError

    try:  # the cache only: no network call on every load of a model converted before
        folder = Path(snapshot_download(model, allow_patterns=ALLOW_PATTERNS, local_files_only=True))
    except Exception:  # not cached (or not a repo id): huggingface_hub's own error types
        if not model.startswith("mlx-community/"):
            return None
        try:
            folder = resolve(model).folder
        except ConversionError:
            return None
    return folder if is_mlx_lm(folder) else None


def genai_manifest(folder: Path):
    """What edgegen needs to run an onnxruntime-genai folder, read from its genai_config.json (and
    its graph's quantized MatMuls: what `info` and `bench` report)."""
    from edgegen.core.manifest import Manifest
    from edgegen.tokenizer import Tokenizer

    try:
        genai = json.loads((folder / "genai_config.json").read_text(encoding="utf-8"))
        model = genai["model"]
        context = int(model.get("context_length") or genai["search"]["max_length"])
        kind, vocab = str(model["type"]), int(model["vocab_size"])
        filename = str(model["decoder"]["filename"])
        eos = model.get("eos_token_id", [])
        eos = [int(eos)] if isinstance(eos, int) else [int(i) for i in eos]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{folder / 'genai_config.json'} cannot be read ({type(exc).__name__}: {exc}); is it "
                          "onnxruntime-genai's?") from None
    tokenizer = Tokenizer(folder)
    eos += [i for i in tokenizer.eos_token_ids if i not in eos]  # genai stops at its own list (generation_config's)
    return Manifest(
        family="ar", architecture=kind, runtime="onnx", dtype="fp32", quantization=_genai_quantization(folder / filename),
        context_length=context, vocab_size=vocab,
        special_tokens={"bos_token_id": tokenizer.bos_token_id, "eos_token_ids": eos},
        source={"path": str(folder), "layout": "onnxruntime-genai"}, config=genai,
        files={"model": filename})


def _genai_quantization(graph: Path):
    """q4/q8 with its block size where the builder's graph has MatMulNBits (its int4/int8 weights)."""
    from edgegen.core.manifest import Quantization

    try:  # `import onnx` costs ~0.8 s of every load: only where the graph (weights outside it) names the op
        if graph.stat().st_size > 64 * 2**20 or b"MatMulNBits" not in graph.read_bytes():
            return Quantization()
    except OSError:  # missing: said when the session opens it
        return Quantization()
    import onnx

    try:
        nodes = onnx.load(str(graph), load_external_data=False).graph.node
    except Exception:  # a damaged graph: said when the session opens it
        return Quantization()
    for node in nodes:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            return Quantization(f"q{attrs.get('bits', 4)}", int(attrs.get("block_size", 32)))
    return Quantization()


def mlx_lm_manifest(folder: Path):
    """What edgegen needs to run an mlx-lm folder, read from its own files (nothing is written)."""
    from edgegen.core.manifest import Manifest, Quantization
    from edgegen.tokenizer import Tokenizer

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        q = config.get("quantization")
        quant = Quantization()
        if q:
            extra = sorted(k for k in q if k not in ("group_size", "bits", "mode")) if isinstance(q, dict) else []
            if not isinstance(q, dict) or q.get("bits") not in (4, 8) or q.get("mode", "affine") != "affine" or extra:
                raise ConfigError(f"{folder} is quantized as mlx-lm's {q!r:.80}; edgegen runs 4- and 8-bit affine "
                                  "quantization with one setting for every layer: convert the original checkpoint "
                                  "instead")
            quant = Quantization(f"q{q['bits']}", int(q["group_size"]))
        context, vocab = int(config.get("max_position_embeddings") or 4096), int(config["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{folder / 'config.json'} cannot be read as an mlx-lm model's ({type(exc).__name__}: "
                          f"{exc}); is the folder complete?") from None
    dtype = {"float16": "fp16", "bfloat16": "bf16"}.get(config.get("torch_dtype") or config.get("dtype"), "fp32")
    tokenizer = Tokenizer(folder)
    return Manifest(
        family="ar", architecture=str(config.get("model_type")), runtime="mlx", dtype=dtype, quantization=quant,
        context_length=context, vocab_size=vocab,
        special_tokens={"bos_token_id": tokenizer.bos_token_id, "eos_token_ids": list(tokenizer.eos_token_ids)},
        source={"path": str(folder), "layout": "mlx-lm"}, config=config,
        files={"weights": "*.safetensors"})


def _is_current(folder: Path) -> bool:
    """A cached conversion this edgegen can still load (its manifest's format is the current one)."""
    try:
        return json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8")).get("format_version") == FORMAT_VERSION
    except (OSError, ValueError, AttributeError):
        return False


STAMP = "edgegen.source.json"  # beside a cached conversion: what its source looked like


def _source_stamp(folder: Path) -> str:
    """Names, sizes and modification times of every file of a local source: a changed source is
    converted again (a retrained or edited file keeps its size, not its time), without reading it."""
    files = sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                   for p in folder.rglob("*") if p.is_file())
    return hashlib.sha256(json.dumps(files).encode()).hexdigest()


def _hub_stamp(model: str) -> str:
    """A hub id's stamp: the revision its cached snapshot holds now (a new revision fetched into
    the Hugging Face cache is converted again); the id alone before anything is cached."""
    if model.count("/") != 1:
        return model
    try:
        from huggingface_hub import snapshot_download

        from edgegen.converters.hub import ALLOW_PATTERNS

        return f"{model}@{Path(snapshot_download(model, allow_patterns=ALLOW_PATTERNS, local_files_only=True)).name}"
    except Exception:  # not cached: huggingface_hub's own error types
        return model


def _read_stamp(folder: Path) -> str | None:
    try:
        return json.loads((folder / STAMP).read_text(encoding="utf-8"))["source"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def locate(model: str | None, runtime: str | None = None, quant: str = "none") -> Path:
    """The converted folder for `model`, converting it (with `quant` weights) into the cache on
    first use, and again when the cached copy was written by an older edgegen."""
    model = model or DEFAULT_MODEL
    if (is_converted(model) or is_foreign(model)) and quant == "none":
        return Path(model).expanduser()
    if is_foreign(model):
        raise ConfigError(f"{model} is an {'mlx-lm' if is_mlx_lm(model) else 'onnxruntime-genai'} folder, which "
                          "edgegen runs as it is; a q4/q8 copy of it needs the original checkpoint (a draft: use "
                          "prompt-lookup or another model)")
    hub = _cached_foreign(model)  # a hub id of an mlx-lm model (mlx-community's): run as it is
    if hub is not None and quant == "none":
        return hub
    runtime = runtime or default_runtime()
    src = source_path(model)
    if src == model and model == DEFAULT_MODEL and not Path(model).exists():
        raise ConfigError(f"the bundled model {DEFAULT_MODEL!r} is not in this installation; "
                          "pass a converted model folder or a Hugging Face repo id")
    slug = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in model.strip("/"))[-60:]
    digest = hashlib.sha256(str(Path(src).expanduser().resolve() if Path(src).exists() else src).encode()).hexdigest()
    suffix = "" if quant == "none" else f"-{quant}"
    out = cache_dir() / "converted" / f"{slug}-{digest[:8]}-{runtime}{suffix}"
    stamp = _source_stamp(Path(src).expanduser()) if Path(src).expanduser().is_dir() else _hub_stamp(src)
    if not _is_current(out) or _read_stamp(out) != stamp:
        convert_source(model, out, runtime=runtime, quant=quant, force=True)
        (out / STAMP).write_text(json.dumps({"source": stamp}), encoding="utf-8")
        print(f"edgegen: converted {model} for {runtime}{suffix} into {out} (kept for next time)", file=sys.stderr)
    return out
