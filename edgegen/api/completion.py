"""`Model.complete`: k completion drafts from one pass (Superposed Decoding), with the model's own
n-gram store when it has one (`ngram/` in its folder, copied there by `edgegen convert`).

It is given what it uses (a session, the tokenizer, a store) rather than the Model, so that
`api.model` imports it and nothing here imports `api.model`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Iterator

from edgegen.core.options import GenerateOptions
from edgegen.core.stats import GenerationStats
from edgegen.decoding import ngram
from edgegen.decoding.autoregressive import Session
from edgegen.decoding.superposed import Superposed, SuperposedSettings
from edgegen.grammar import constraint_for
from edgegen.tokenizer import Tokenizer

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


def store_for(spec: str | None, folder: Path | None, vocab_size: int,
              fingerprint: Callable[[], str]) -> ngram.NgramStore | None:
    """The n-gram store `spec` names ("none": no store; None: the model's own in `folder`, if any);
    `fingerprint()` gives the tokenizer's (asked for only when there is a store to check)."""
    if spec == "none":
        return None
    if spec is None:
        own = folder / STORE_FOLDER if folder else None
        if own is None or not (own / "edgegen.json").is_file():
            return None
        spec = str(own)
    return ngram.NgramStore(Path(spec).expanduser(), vocab_size=vocab_size, tokenizer_fingerprint=fingerprint())


def run(session: Session, tokenizer: Tokenizer, vocab_size: int, store: ngram.NgramStore | None, ids: list[int],
        options: GenerateOptions, stats: GenerationStats) -> Iterator[Completion]:
    """Completions after every step (the last is final); call with the model's lock held."""
    sup = options.superposed
    settings = SuperposedSettings(drafts=sup.drafts, ngram_weight=sup.ngram_weight)
    stop_ids = () if options.ignore_eos else tokenizer.eos_token_ids
    constraint = constraint_for(options.output, tokenizer, vocab_size, tokenizer.eos_token_ids, len(ids))
    engine = Superposed(session, settings, store, stop_ids, constraint)
    for drafts in engine.run(ids, options.max_tokens, stats):
        out = [CompletionDraft(tokenizer.decode(d.tokens), list(d.tokens), d.score, d.perplexity, d.finished)
               for d in drafts]
        yield Completion(out, stats, None if store is None else str(store.folder), engine.trace)
