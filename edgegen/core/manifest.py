"""`edgegen.json`: the self-description written next to every converted model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from edgegen.core.errors import ConfigError

FORMAT_VERSION = 1
MANIFEST_NAME = "edgegen.json"
RUNTIMES = ("mlx", "onnx")
DTYPES = ("fp32", "fp16", "bf16")
QUANTS = ("none", "q8", "q4")
FAMILIES = {"ar": "autoregressive LLM", "dllm": "diffusion LLM",
            "var": "visual autoregressive image model (next-scale prediction)"}


@dataclasses.dataclass
class Quantization:
    method: str = "none"  # none | q8 | q4
    group_size: int | None = None

    @property
    def bits(self) -> int | None:
        return {"q8": 8, "q4": 4}.get(self.method)


@dataclasses.dataclass
class Manifest:
    family: str  # "ar" for autoregressive LLMs
    architecture: str  # Hugging Face model_type
    runtime: str  # mlx | onnx
    dtype: str
    quantization: Quantization
    context_length: int
    vocab_size: int
    special_tokens: dict[str, Any]  # bos_token_id, eos_token_ids, pad_token_id
    source: dict[str, Any]  # repo, revision or content hash
    config: dict[str, Any]  # the Hugging Face config.json as read
    files: dict[str, str] = dataclasses.field(default_factory=dict)  # role -> file name
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    def write(self, folder: Path) -> None:
        (Path(folder) / MANIFEST_NAME).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def read(cls, folder: str | Path) -> "Manifest":
        path = Path(folder) / MANIFEST_NAME
        if not path.is_file():
            raise ConfigError(
                f"{folder} is not a converted edgegen model (no {MANIFEST_NAME}); "
                "run `edgegen convert SRC -o OUT` first"
            )
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            version = raw.pop("format_version")
            raw["quantization"] = Quantization(**raw["quantization"])
            manifest = cls(**raw, format_version=version)
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path} is corrupt ({exc}); convert the model again") from None
        if version > FORMAT_VERSION:
            raise ConfigError(
                f"{path} has format version {version}, newer than this edgegen understands "
                f"({FORMAT_VERSION}); upgrade edgegen"
            )
        return manifest

    def describe(self) -> list[tuple[str, str]]:
        """Human-readable (label, value) rows for `edgegen info`."""
        q = self.quantization
        quant = "none" if q.method == "none" else f"{q.method} (group size {q.group_size})"
        src = self.source.get("repo") or self.source.get("path", "?")
        rev = self.source.get("revision") or self.source.get("sha256", "")[:12]
        return [
            ("family", FAMILIES.get(self.family, self.family)),
            ("architecture", self.architecture),
            ("runtime", self.runtime),
            ("dtype", self.dtype),
            ("quantization", quant),
            ("context length", str(self.context_length)),
            ("vocabulary", str(self.vocab_size)),
            ("special tokens", ", ".join(f"{k}={v}" for k, v in self.special_tokens.items())),
            ("source", f"{src} @ {rev}" if rev else src),
            ("format version", str(self.format_version)),
        ]
