"""Perplexity through the KV cache: every token is fed one at a time, so each prediction reads the
cache (a quantized cache included) exactly as decoding does; one big forward would never touch it."""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Callable, Iterable, Sequence

import numpy as np

from edgegen.core.errors import CapabilityError, ConfigError
from edgegen.core.protocols import Feed, KVSpec, LanguageModel


@dataclasses.dataclass
class PerplexityResult:
    perplexity: float
    stderr: float  # standard error of the perplexity (delta method over per-token NLL)
    tokens: int  # tokens scored
    mean_nll: float  # mean per-token negative log-likelihood, natural log


class _Running:
    """Mean and variance of a stream (Welford), so scoring keeps no per-token array."""

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, x: float) -> None:
        self.count += 1
        delta = x - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (x - self.mean)

    def result(self) -> PerplexityResult:
        se = math.sqrt(self.m2 / (self.count - 1) / self.count) if self.count > 1 else 0.0
        return PerplexityResult(math.exp(self.mean), math.exp(self.mean) * se, self.count, self.mean)


def perplexity(model: LanguageModel, ids: Iterable[int], *, kv: KVSpec | None = None, context: int | None = None,
               on_token: Callable[[int], None] = lambda n: None) -> PerplexityResult:
    """Score `ids` (a sequence or a stream) in windows of `context` tokens (default: the model's
    context), each from an empty cache; the first token of a window is given, every later one is
    predicted. Memory holds one window, whatever the length of the stream."""
    context = model.context_length if context is None else min(context, model.context_length)
    if context < 2:
        raise ConfigError("--context must be at least 2 tokens")
    stream, stats = iter(ids), _Running()
    while len(window := list(itertools.islice(stream, context))) >= 2:
        cache = model.new_cache(kv)
        logits = model.forward(Feed(window[:1]), cache)[-1]
        for i, token in enumerate(window[1:], start=2):
            stats.add(_nll(logits, token))
            if i < len(window):
                logits = model.forward(Feed([token]), cache)[-1]
            on_token(1)
    if stats.count == 0:
        raise ConfigError("the text has fewer than 2 tokens; give a longer text")
    return stats.result()


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
        try:
            value = perplexity(model, ids, kv=KVSpec(bits=bits)).perplexity
        except CapabilityError:  # a precision this model's runtime cannot keep (e.g. MLX, head_dim 16)
            measured[str(bits)] = None
            continue
        measured[str(bits)] = round(value, 4)
        if value <= base * (1 + tolerance):
            chosen = bits
            break
    return {"kv_bits": chosen, "perplexity": measured, "tokens": len(ids), "tolerance": tolerance}
