"""A backend-free `LanguageModel`: logits are a fixed function of the previous token, so any
decoding strategy can be checked exactly and in microseconds."""

from __future__ import annotations


import numpy as np

from edgegen.core.protocols import Capability, Feed


class FakeCache:
    def __init__(self, capacity: int):
        self.tokens: list[int] = []
        self._capacity = capacity

    @property
    def length(self) -> int:
        return len(self.tokens)

    @property
    def capacity(self) -> int:
        return self._capacity

    def truncate(self, length: int) -> None:
        del self.tokens[length:]


class FakeModel:
    """Next-token logits depend on the previous token only (a random bigram table)."""

    capabilities = Capability.LOGITS | Capability.ROLLBACK | Capability.MULTI_TOKEN | Capability.SCORE_ONLY

    def __init__(self, vocab_size: int = 32, context_length: int = 64, seed: int = 0, sharpness: float = 3.0):
        self.vocab_size, self.context_length = vocab_size, context_length
        self.table = np.random.default_rng(seed).normal(size=(vocab_size, vocab_size)).astype(np.float32) * sharpness
        self.calls: list[list[int]] = []

    def new_cache(self, kv=None) -> FakeCache:
        return FakeCache(self.context_length)

    def forward(self, feed: Feed, cache: FakeCache) -> np.ndarray:
        tokens = list(feed.tokens)
        self.calls.append(tokens)
        if feed.commit:
            cache.tokens.extend(tokens)
        logits = self.table[np.asarray(tokens)]
        return logits[-feed.rows:] if feed.rows else logits
