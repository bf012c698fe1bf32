"""`edgegen.json`: the self-description written next to every converted model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from edgegen.core.errors import ConfigError

FORMAT_VERSION = 2  # 2: inputs_embeds, KV-cache graph variants and the `kv` table
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
    kv: dict[str, Any] = dataclasses.field(default_factory=dict)  # {"bytes_per_token": {"float", "16", "8", "4"}}
    diffusion: dict[str, Any] = dataclasses.field(default_factory=dict)  # family "dllm": the resolved DiffusionSpec
    target: str = "cpu"  # onnx: "cpu" (dynamic graphs, contrib ops) | "npu" (static bundle, standard ops)
    npu: dict[str, Any] = dataclasses.field(default_factory=dict)  # target npu: context, chunk, precision
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
            if not isinstance(raw, dict):
                raise TypeError(f"a JSON {type(raw).__name__}, not an object")
            if raw.get("kind") == "ngram-store":
                raise ConfigError(f"{folder} is an n-gram store (for `edgegen complete --ngram`), not a model")
            version = raw.pop("format_version")
            raw["quantization"] = Quantization(**raw["quantization"])
            manifest = cls(**raw, format_version=version)
            manifest._check_types()
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is corrupt ({exc}); convert the model again") from None
        if version > FORMAT_VERSION:
            raise ConfigError(
                f"{path} has format version {version}, newer than this edgegen understands "
                f"({FORMAT_VERSION}); upgrade edgegen"
            )
        return manifest

    def _check_types(self) -> None:
        """Each field of the type this dataclass declares (a hand-edited or damaged file otherwise
        fails later, far from its cause)."""
        kinds = {"str": (str, "a string"), "int": (int, "an integer"), "dict": (dict, "an object")}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            kind, words = kinds.get(str(field.type).split("[")[0], (object, ""))
            if not isinstance(value, kind) or isinstance(value, bool):
                raise TypeError(f"{field.name} should be {words}, not {json.dumps(value)[:40]}")
        if not isinstance(self.quantization.method, str):
            raise TypeError(f"quantization.method should be a string, not {json.dumps(self.quantization.method)[:40]}")

    def _diffusion_rows(self) -> list[tuple[str, str]]:
        d = self.diffusion
        if not d:
            return []
        attention = {"block": "block-causal", "full": "bidirectional"}.get(d.get("attention"), d.get("attention"))
        extra = ", logits shifted" if d.get("shift") else ""
        return [("diffusion", f"{attention}, block {d.get('block_size')}, mask id {d.get('mask_token_id')}{extra}; "
                              f"default rule {d.get('rule')} (threshold {d.get('threshold')}), cache {d.get('cache')}")]

    def _kv_rows(self) -> list[tuple[str, str]]:
        table = self.kv.get("bytes_per_token") or {}
        if not table:
            return []
        names = {"float": "float", "16": "16-bit", "8": "8-bit", "4": "4-bit"}  # largest first
        order = list(names)
        cells = [f"{names.get(k, k)} {int(v):,}" for k, v in
                 sorted(table.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))]
        return [("KV bytes per token", " · ".join(cells))]

    def _var_rows(self) -> list[tuple[str, str]]:
        """The rows of a VAR image model (family "var") that replace context length and special tokens."""
        c = self.config
        names = c.get("class_names") or []
        classes = f"{c.get('num_classes')}" + (f" ({', '.join(names[:10])}{', ...' if len(names) > 10 else ''})"
                                               if names else "")
        return [("image size", f"{c.get('image_size')}×{c.get('image_size')}"), ("classes", classes),
                ("scales", " ".join(f"{p}²" for p in c.get("patch_nums", ())) + f" ({self.context_length} tokens)"),
                ("transformer", f"depth {c.get('depth')}, width {c.get('embed_dim')}, {c.get('num_heads')} heads"),
                ("codebook", f"{self.vocab_size} codes × {c.get('vae', {}).get('z_channels')}")]

    def _npu_rows(self) -> list[tuple[str, str]]:
        if self.target != "npu":
            return []
        n = self.npu
        return [("NPU graphs", f"chunk {n.get('chunk')} inputs + step 1 input over {n.get('context')} cache slots, "
                               f"static shapes, standard ONNX ops"),
                ("NPU precision", str(n.get("precision")))]

    def describe(self) -> list[tuple[str, str]]:
        """Human-readable (label, value) rows for `edgegen info`."""
        q = self.quantization
        quant = "none" if q.method == "none" else f"{q.method} (group size {q.group_size})"
        src = self.source.get("repo") or self.source.get("path", "?")
        rev = self.source.get("revision") or self.source.get("sha256", "")[:12]
        if self.family == "var":
            quant = quant if q.method == "none" or q.group_size else f"{q.method} (per-channel)"
            return [("family", FAMILIES["var"]), ("architecture", self.architecture), ("runtime", self.runtime),
                    ("dtype", self.dtype), ("quantization", quant), *self._var_rows(),
                    ("source", f"{src} @ {rev}" if rev else src), *self._kv_rows(),
                    ("format version", str(self.format_version))]
        return [
            ("family", FAMILIES.get(self.family, self.family)),
            ("architecture", self.architecture),
            *self._diffusion_rows(),
            ("runtime", self.runtime if self.target == "cpu" else f"{self.runtime}, NPU bundle"),
            *self._npu_rows(),
            ("dtype", self.dtype),
            ("quantization", quant),
            ("context length", str(self.context_length)),
            ("vocabulary", str(self.vocab_size)),
            ("special tokens", ", ".join(f"{k}={v}" for k, v in self.special_tokens.items())),
            ("source", f"{src} @ {rev}" if rev else src),
            *self._kv_rows(),
            ("format version", str(self.format_version)),
        ]
