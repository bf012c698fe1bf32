"""Turning logits into tokens: repetition penalty, temperature, top-k, top-p, min-p (in the order
transformers applies them). Seeded samplers are reproducible."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from edgegen.core.options import SamplingParams

__all__ = ["Sampler", "SamplingParams"]


class Sampler:
    """Callable `(logits (vocab,), history) -> token id`; `probs` gives the distribution it samples."""

    def __init__(self, params: SamplingParams | None = None):
        self.params = params or SamplingParams()
        self.rng = np.random.default_rng(self.params.seed)

    def process(self, logits: np.ndarray, history: Sequence[int]) -> np.ndarray:
        """Logits after the repetition penalty (float64, (vocab,))."""
        logits = np.asarray(logits, dtype=np.float64)
        penalty = self.params.repetition_penalty
        if penalty != 1.0 and len(history):
            seen = np.unique(np.asarray(history, dtype=np.int64))
            picked = logits[seen]
            logits = logits.copy()
            logits[seen] = np.where(picked > 0, picked / penalty, picked * penalty)
        return logits

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
        if self.params.greedy:
            if self.params.repetition_penalty == 1.0:
                return int(np.argmax(logits))  # the hot path: no copy of the logits
            return int(np.argmax(self.process(logits, history)))
        probs = self.probs(logits, history)
        return int(self.rng.choice(probs.size, p=probs))


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
