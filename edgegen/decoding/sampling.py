"""Turning logits into tokens: repetition penalty, an output constraint's mask, temperature, top-k,
top-p, min-p (in the order transformers applies them). Seeded samplers are reproducible.

Log-probabilities (when asked for) are reported from the distribution the token was decided from,
before truncation: log_softmax of the logits after the repetition penalty and the grammar mask,
divided by the temperature (1 for greedy decoding); top-k, top-p and min-p only choose which
tokens may be drawn."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from edgegen.core.options import SamplingParams
from edgegen.core.protocols import TokenConstraint
from edgegen.core.stats import TokenLogprob

__all__ = ["Sampler", "SamplingParams"]


class Sampler:
    """Callable `(logits (vocab,), history) -> token id`; `probs` gives the distribution it samples.
    `constraint` masks the tokens that would leave an output grammar; with `top_logprobs` (0-20)
    every decided token's log-probability is kept in `decided`, by position (len(history))."""

    def __init__(self, params: SamplingParams | None = None, constraint: TokenConstraint | None = None,
                 top_logprobs: int | None = None):
        self.params = params or SamplingParams()
        self.rng = np.random.default_rng(self.params.seed)
        self.constraint, self.top_logprobs = constraint, top_logprobs
        self.decided: dict[int, TokenLogprob] = {}

    def derived(self, params: SamplingParams) -> "Sampler":
        """A sampler for a draft model: other settings, the same constraint, no log-probabilities."""
        return Sampler(params, self.constraint)

    def process(self, logits: np.ndarray, history: Sequence[int]) -> np.ndarray:
        """Logits after the repetition penalty and the constraint's mask (float64, (vocab,))."""
        logits = np.asarray(logits, dtype=np.float64)
        penalty = self.params.repetition_penalty
        if penalty != 1.0 and len(history):
            seen = np.unique(np.asarray(history, dtype=np.int64))
            picked = logits[seen]
            logits = logits.copy()
            logits[seen] = np.where(picked > 0, picked / penalty, picked * penalty)
        if self.constraint is not None:
            allowed = self.constraint.allowed(history)
            logits = np.where(_fit(allowed, logits.size), logits, -np.inf)
        return logits

    def record(self, logits: np.ndarray, history: Sequence[int], token: int) -> None:
        """Keep `token`'s log-probability at its position (only when log-probabilities are asked for)."""
        if self.top_logprobs is None:
            return
        z = self.process(logits, history) / (self.params.temperature or 1.0)
        finite = z[np.isfinite(z)]
        logp = z - (finite.max() + np.log(np.exp(finite - finite.max()).sum()))
        k = min(self.top_logprobs, int(np.isfinite(logp).sum()))
        top = np.argpartition(-logp, k - 1)[:k] if k else np.zeros(0, np.int64)
        top = top[np.argsort(-logp[top], kind="stable")]
        self.decided[len(history)] = TokenLogprob(int(token), float(logp[token]),
                                                  tuple((int(t), float(logp[t])) for t in top))

    def probs(self, logits: np.ndarray, history: Sequence[int] = ()) -> np.ndarray:
        """The exact distribution `__call__` draws from, float64 (vocab,)."""
        logits = self.process(logits, history)
        p = self.params
        if p.greedy:
            out = np.zeros_like(logits)
            out[int(np.argmax(logits))] = 1.0
            return out
        probs = _softmax(logits / p.temperature)
        if p.top_k and p.top_k < probs.size:
            kth = np.partition(probs, -p.top_k)[-p.top_k]
            probs = np.where(probs >= kth, probs, 0.0)
        if p.top_p < 1.0:
            probs = _top_p(probs, p.top_p)
        if p.min_p > 0:
            probs = np.where(probs >= p.min_p * probs.max(), probs, 0.0)
        return probs / probs.sum()

    def __call__(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        token = self._decide(logits, history)
        self.record(logits, history, token)
        return token

    def _decide(self, logits: np.ndarray, history: Sequence[int]) -> int:
        if self.params.greedy:
            if self.params.repetition_penalty == 1.0 and self.constraint is None:
                return int(np.argmax(logits))  # the hot path: no copy of the logits
            return int(np.argmax(self.process(logits, history)))
        probs = self.probs(logits, history)
        return int(self.rng.choice(probs.size, p=probs))


def _fit(mask: np.ndarray, size: int) -> np.ndarray:
    """A vocabulary mask cut or padded (with False) to the logits' width."""
    if mask.size == size:
        return mask
    out = np.zeros(size, dtype=bool)
    out[: min(size, mask.size)] = mask[:size]
    return out


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _top_p(probs: np.ndarray, top_p: float) -> np.ndarray:
    order = np.argsort(-probs, kind="stable")
    cumulative = np.cumsum(probs[order])
    keep = cumulative - probs[order] < top_p  # keep the smallest prefix whose mass reaches top_p
    out = np.zeros_like(probs)
    out[order[keep]] = probs[order[keep]]
    return out
