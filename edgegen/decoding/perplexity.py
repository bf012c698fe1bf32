"""Perplexity through the KV cache: every token is fed one at a time, so each prediction reads the
cache (a quantized cache included) exactly as decoding does; one big forward would never touch it."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np

from edgegen.core.errors import ConfigError
from edgegen.core.protocols import Feed, KVSpec, LanguageModel


@dataclasses.dataclass
class PerplexityResult:
    perplexity: float
    stderr: float  # standard error of the perplexity (delta method over per-token NLL)
    tokens: int  # tokens scored
    nll: np.ndarray  # per-token negative log-likelihood, natural log

    @property
    def mean_nll(self) -> float:
        return float(self.nll.mean())


def perplexity(model: LanguageModel, ids: Sequence[int], *, kv: KVSpec | None = None, context: int | None = None,
               on_token: Callable[[int], None] = lambda n: None) -> PerplexityResult:
    """Score `ids` in windows of `context` tokens (default: the model's context), each from an empty
    cache; the first token of a window is given, every later one is predicted."""
    context = model.context_length if context is None else min(context, model.context_length)
    if context < 2:
        raise ConfigError("--context must be at least 2 tokens")
    if len(ids) < 2:
        raise ConfigError("the text has fewer than 2 tokens; give a longer text")
    nll: list[float] = []
    for start in range(0, len(ids) - 1, context):
        window = ids[start:start + context]
        if len(window) < 2:
            break
        cache = model.new_cache(kv)
        logits = model.forward(Feed(window[:1]), cache)[-1]
        for i, token in enumerate(window[1:], start=2):
            nll.append(_nll(logits, token))
            if i < len(window):
                logits = model.forward(Feed([token]), cache)[-1]
            on_token(1)
    values = np.asarray(nll)
    mean = float(values.mean())
    se = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0
    return PerplexityResult(math.exp(mean), math.exp(mean) * se, len(values), values)


def _nll(logits: np.ndarray, token: int) -> float:
    z = np.asarray(logits, dtype=np.float64)
    top = z.max()
    return float(top + math.log(np.exp(z - top).sum()) - z[token])


def choose_kv_bits(model: LanguageModel, ids: Sequence[int], tolerance: float = 0.01,
                   candidates: Sequence[int] = (4, 8, 16)) -> dict:
    """The smallest KV precision whose perplexity on `ids` is within `tolerance` of the float
    cache's: {"kv_bits": bits or None, "perplexity": {"float": …, "4": …, …}, "tokens": n}."""
    base = perplexity(model, ids).perplexity
    measured = {"float": round(base, 4)}
    chosen = None
    for bits in sorted(candidates):
        value = perplexity(model, ids, kv=KVSpec(bits=bits)).perplexity
        measured[str(bits)] = round(value, 4)
        if value <= base * (1 + tolerance):
            chosen = bits
            break
    return {"kv_bits": chosen, "perplexity": measured, "tokens": len(ids), "tolerance": tolerance}
