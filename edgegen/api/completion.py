"""`Model.complete`: k completion drafts from one pass (Superposed Decoding), with the model's own
n-gram store when it has one (`ngram/` in its folder, copied there by `edgegen convert`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from edgegen.core.options import GenerateOptions
from edgegen.core.stats import GenerationStats
from edgegen.decoding import ngram
from edgegen.decoding.superposed import Superposed, SuperposedSettings
from edgegen.grammar import constraint_for

if TYPE_CHECKING:
    from edgegen.api.model import Model

STORE_FOLDER = "ngram"


@dataclasses.dataclass
class CompletionDraft:
    text: str
    token_ids: list[int]
    score: float  # summed (1 − α)·log p_LLM + α·log P_ngram of its tokens
    perplexity: float  # exp(−score / length): the ranking (lower first)
    finished: bool  # ended at an end-of-sequence token


@dataclasses.dataclass
class Completion:
    drafts: list[CompletionDraft]
    stats: GenerationStats
    ngram_store: str | None  # the store used, if any
    trace: object = None  # per-step LLM log-probabilities (to recompute scores)

    @property
    def seconds_per_draft(self) -> float:
        return (self.stats.prefill_seconds + self.stats.decode_seconds) / max(len(self.drafts), 1)


def store_for(model: "Model", spec: str | None) -> ngram.NgramStore | None:
    """The n-gram store `spec` names ("none": no store; None: the model's own, if any)."""
    if spec == "none":
        return None
    if spec is None:
        own = model.folder / STORE_FOLDER if model.folder else None
        if own is None or not (own / "edgegen.json").is_file():
            return None
        spec = str(own)
    if model._ngram_fingerprint is None:
        model._ngram_fingerprint = ngram.fingerprint(model.tokenizer.vocabulary())
    return ngram.NgramStore(Path(spec).expanduser(), vocab_size=model.backend.vocab_size,
                            tokenizer_fingerprint=model._ngram_fingerprint)


def run(model: "Model", ids: list[int], options: GenerateOptions, stats: GenerationStats) -> Iterator[Completion]:
    """Completions after every step (the last is final); call with the model's lock held."""
    sup = options.superposed
    store = store_for(model, sup.ngram)
    settings = SuperposedSettings(drafts=sup.drafts, ngram_weight=sup.ngram_weight)
    stop_ids = () if options.ignore_eos else model.tokenizer.eos_token_ids
    constraint = constraint_for(options.output, model.tokenizer, model.backend.vocab_size,
                                model.tokenizer.eos_token_ids, len(ids))
    engine = Superposed(model._session_for(options), settings, store, stop_ids, constraint)
    for drafts in engine.run(ids, options.max_tokens, stats):
        out = [CompletionDraft(model.tokenizer.decode(d.tokens), list(d.tokens), d.score, d.perplexity, d.finished)
               for d in drafts]
        yield Completion(out, stats, None if store is None else str(store.folder), engine.trace)
