"""Draft sources for speculative decoding, resolved and kept per Model (a chat keeps the draft's
cache across turns).

The Model hands over itself (as a `DraftHost`) and its `load`, so that nothing here imports
`api.model`, which imports this."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Protocol

from edgegen.core.errors import ConfigError
from edgegen.core.manifest import Manifest
from edgegen.core.options import SamplingParams, SpeculativeOptions
from edgegen.core.protocols import KVSpec
from edgegen.decoding.draft_length import DraftLength
from edgegen.decoding.drafters import ModelDrafter, PromptLookupDrafter
from edgegen.models import source_path
from edgegen.tokenizer import Tokenizer, has_tokenizer


class DraftHost(Protocol):
    """What the drafts need of the Model they draft for."""

    manifest: Manifest
    tokenizer: Tokenizer
    load_options: dict[str, Any]  # provider, device, threads: the draft loads as the model did


class Drafts:
    """The drafters a Model has used, kept so that a chat keeps the draft's cache across turns.
    `load` is `edgegen.api.load` (the draft is loaded as any model is)."""

    def __init__(self, model: DraftHost, load: Callable[..., Any]):
        self.model, self.load = model, load
        self.cache: dict[tuple, object] = {}
        self.policies: dict[tuple, DraftLength] = {}  # (draft, kv, max_draft, greedy) -> what `auto` learned

    def draft_length(self, spec: SpeculativeOptions, kv: KVSpec | None, sampling: SamplingParams) -> DraftLength:
        """The draft-length policy for one generation. `auto` keeps what it learned (iteration
        costs, acceptance rates) per draft, cache precision and greedy-or-sampling (their
        acceptance differs most) across calls, so that a chat's later turns and a server's later
        requests start where the last reply left off rather than warming up and probing again."""
        seeded = sampling.seed is not None and not sampling.greedy
        if spec.num_draft != "auto" or seeded:
            return DraftLength.for_options(spec.num_draft, spec.max_draft, seeded)
        key = (spec.draft, kv, spec.max_draft, sampling.greedy)
        return self.policies.setdefault(key, DraftLength(None, spec.max_draft))

    def get(self, spec: str, kv: KVSpec | None):
        key = (spec, kv)
        if key not in self.cache:
            self.cache.clear()  # one drafter at a time: a draft model's weights are not small
            self.cache[key] = self._make(spec, kv)
        return self.cache[key]

    def _make(self, spec: str, kv: KVSpec | None):
        if spec == "prompt-lookup":
            return PromptLookupDrafter()
        model = self.model
        options = dict(model.load_options)
        if model.manifest.target == "npu":  # the draft runs on the host CPU, beside the NPU's verification
            options["provider"] = None
        if spec in ("q4", "q8"):
            draft = self.load(_source_of(model.manifest), runtime=model.manifest.runtime, quant=spec,
                              _draft=True, **options)
        else:
            local = Path(source_path(spec)).expanduser()
            hf = _read_json(local / "config.json")
            _refuse_diffusion(spec, hf, _read_json(local / "edgegen.json"))
            if has_tokenizer(local):  # refuse a mismatch before converting anything
                tokenizer = Tokenizer(local)
                self._check_vocabulary(spec, tokenizer)
                _check_embedding(spec, (hf or {}).get("vocab_size"), tokenizer)
            draft = self.load(spec, runtime=model.manifest.runtime, _draft=True, **options)
        if not hasattr(draft, "tokenizer"):
            raise ConfigError(f"the draft {spec!r} is not a language model")
        if draft.manifest.family == "dllm":  # a converted folder or a hub id: known only now
            raise ConfigError(_DIFFUSION.format(spec=spec))
        self._check_vocabulary(spec, draft.tokenizer)
        _check_embedding(spec, draft.backend.vocab_size, draft.tokenizer)
        return ModelDrafter(draft.backend, spec, kv)

    def _check_vocabulary(self, spec: str, tokenizer: Tokenizer) -> None:
        if tokenizer.vocabulary() != self.model.tokenizer.vocabulary():
            raise ConfigError(f"the draft {spec!r} has another tokenizer than the model; a draft must share "
                              "the model's vocabulary (e.g. a smaller model of the same family)")


def _read_json(path: Path) -> dict | None:
    """A small JSON file of a local draft source, or None where there is none (or it is no JSON
    object: loading the draft then says what is wrong)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _refuse_diffusion(spec: str, hf: dict | None, manifest: dict | None) -> None:
    """A diffusion LLM cannot draft left to right; say so rather than that its tokenizer (with its
    mask token) differs. `manifest`: a converted folder's; `hf`: a checkpoint's config.json."""
    from edgegen.archs import arch_module
    from edgegen.core.errors import EdgegenError

    if manifest is not None:
        diffusion = manifest.get("family") == "dllm"
    elif hf is not None:
        try:
            diffusion = arch_module(hf.get("model_type", "")).parse_config(hf).diffusion is not None
        except (EdgegenError, ValueError, KeyError, TypeError, AttributeError):
            return  # not ours to judge here: loading it says what is wrong
    else:
        return
    if diffusion:
        raise ConfigError(_DIFFUSION.format(spec=spec))


_DIFFUSION = ("the draft {spec!r} is a diffusion LLM; a draft proposes tokens left to right: use an autoregressive "
              "model with the same tokenizer, q4, q8 or prompt-lookup")


def _check_embedding(spec: str, rows: object, tokenizer: Tokenizer) -> None:
    """A draft must embed every id its tokenizer has: the model writes them, the draft reads them."""
    ids = tokenizer.vocab_size
    if isinstance(rows, int) and rows < ids:
        raise ConfigError(f"the draft {spec!r} embeds {rows} token ids but its tokenizer has {ids}: it could not "
                          "read every token the model writes; use a draft whose vocabulary covers its tokenizer")


def _source_of(manifest: Manifest) -> str:
    """Where a converted model came from, to convert a quantized copy of it as its draft."""
    src = manifest.source
    if src.get("repo"):
        return src["repo"]
    path = src.get("path")
    if not path or not Path(path).exists():
        raise ConfigError(f"a q4/q8 draft is converted from the model's source ({path or 'unknown'}), which is "
                          "not available here; convert a quantized copy yourself and pass --draft FOLDER")
    return path
