"""Where speculative drafts come from: a smaller (or quantized) model, or the text so far.

A drafter proposes up to `n` tokens after `history` with the distributions they were drawn from
(`None` for deterministic drafts: the verifier then treats each proposal as one-hot, which is the
exact acceptance rule for them). Drafters see only `edgegen.core` protocols.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Protocol, Sequence

import numpy as np

from edgegen.core.protocols import KVSpec, LanguageModel
from edgegen.decoding.autoregressive import Session
from edgegen.decoding.sampling import Sampler


@dataclasses.dataclass
class Proposal:
    tokens: list[int]
    probs: list[np.ndarray] | None  # q_i over the draft's vocabulary, or None (deterministic)
    overhead: float = 0.0  # one-off seconds inside this proposal that drafting every iteration would not pay


class Drafter(Protocol):
    name: str
    free: bool  # costs (next to) nothing to consult: it is asked for shadow drafts during plain decoding

    def prepare(self, prompt: Sequence[int]) -> None:
        """Called once after the target's prefill (so its cost counts as time to first token)."""
        ...

    def propose(self, history: Sequence[int], n: int, sampler: Sampler) -> Proposal: ...

    def catch_up_seconds(self, skipped: int) -> float:
        """An estimate of what the next proposal costs beyond a steady one after `skipped` tokens
        were decided without drafting (a draft model must run them first; 0 for stateless drafts)."""
        ...


class ModelDrafter:
    """A draft model with its own KV cache, kept in step with the target's history by the
    session's prefix reuse (after a rejection it rewinds to the accepted prefix)."""

    free = False

    def __init__(self, model: LanguageModel, name: str, kv: KVSpec | None = None):
        self.model, self.name = model, name
        self.session = Session(model, kv)
        self.sampler: Sampler | None = None
        self._for: Sampler | None = None  # the target sampler `self.sampler` was made for
        self._step: float | None = None  # seconds of a steady catch-up forward (running average)
        self._per_token: float | None = None  # seconds per token of the last long catch-up or prefill

    def prepare(self, prompt: Sequence[int]) -> None:
        """The draft's own prefill of the prompt (reusing what its cache already holds); nothing
        when the prompt does not fit the draft's context (it then proposes nothing)."""
        if len(prompt) >= self.model.context_length:
            return
        t0 = time.perf_counter()
        _, ran = self.session.prefill(list(prompt))
        if ran > 2:
            self._per_token = (time.perf_counter() - t0) / ran

    def catch_up_seconds(self, skipped: int) -> float:
        if self._per_token is None:  # never measured: as dear as a steady draft step per token
            return skipped * (self._step or 0.0)
        return skipped * self._per_token

    def propose(self, history: Sequence[int], n: int, sampler: Sampler) -> Proposal:
        """γ draft forwards in the steady state: one catches up on the 1-2 tokens the target
        decided (and gives the first draft), γ − 1 extend the draft. After a pause the catch-up
        runs more tokens; what that costs beyond a steady step is reported as `overhead`."""
        if len(history) >= self.model.context_length:  # past the draft's own context: no draft
            return Proposal([], None)
        if self._for is not sampler:  # the draft samples with the target's settings, from its own stream
            seed = None if sampler.params.seed is None else sampler.params.seed + 1
            self.sampler, self._for = sampler.derived(dataclasses.replace(sampler.params, seed=seed)), sampler
        t0 = time.perf_counter()
        logits, caught_up = self.session.prefill(list(history))
        catch_up = time.perf_counter() - t0
        if caught_up <= 2:
            self._step = catch_up if self._step is None else 0.9 * self._step + 0.1 * catch_up
        overhead = max(catch_up - (self._step or 0.0), 0.0) if caught_up > 2 else 0.0
        if caught_up > 2:
            self._per_token = overhead / (caught_up - 1)
        context = list(history)
        tokens: list[int] = []
        probs: list[np.ndarray] | None = None if sampler.params.greedy else []
        count = min(n, self.model.context_length - len(context))
        for i in range(count):
            if probs is None:
                token = self.sampler(logits, context)  # greedy: argmax, no distribution needed
            else:
                q = self.sampler.probs(logits, context)
                token = int(self.sampler.rng.choice(q.size, p=q))
                probs.append(q)
            tokens.append(token)
            context.append(token)
            if i + 1 < count:
                logits = self.session.feed([token])[-1]
        return Proposal(tokens, probs, overhead)


class PromptLookupDrafter:
    """Prompt lookup: find the latest earlier occurrence of the last `max_ngram` (down to
    `min_ngram`) tokens in the prompt and conversation so far, and propose what followed it."""

    name = "prompt-lookup"
    free = True

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1):
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def prepare(self, prompt: Sequence[int]) -> None:
        pass

    def catch_up_seconds(self, skipped: int) -> float:
        return 0.0

    def propose(self, history: Sequence[int], n: int, sampler: Sampler) -> Proposal:
        return Proposal(lookup(np.asarray(history, dtype=np.int64), n, self.max_ngram, self.min_ngram), None)


def lookup(history: np.ndarray, n: int, max_ngram: int, min_ngram: int) -> list[int]:
    """Tokens that followed the most recent earlier match of the longest suffix n-gram."""
    size = len(history)
    last = history[-1] if size else -1
    ends = np.flatnonzero(history[: size - 1] == last)  # earlier places of the last token
    for k in range(min(max_ngram, size - 1), min_ngram - 1, -1):
        hits = ends[ends >= k - 1]
        for back in range(1, k):  # ... whose k − 1 tokens before agree too
            hits = hits[history[hits - back] == history[size - 1 - back]]
        if hits.size:
            start = int(hits[-1]) + 1
            return history[start:start + n].tolist()
    return []
