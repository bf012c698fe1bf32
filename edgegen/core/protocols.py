"""The contracts that decoding strategies program against. Runtimes implement them; strategies
never import a backend."""

from __future__ import annotations

import enum
from typing import Protocol, Sequence, runtime_checkable

import numpy as np


class Capability(enum.Flag):
    """What a model can do; strategies declare what they need and check it when built."""

    NONE = 0
    LOGITS = enum.auto()  # forward() returns next-token logits for every fed position
    ROLLBACK = enum.auto()  # cache.truncate() is exact (speculative decoding needs it)
    MULTI_TOKEN = enum.auto()  # forward() accepts several new tokens over a non-empty cache


@runtime_checkable
class KVCache(Protocol):
    @property
    def length(self) -> int:
        """Tokens held."""
        ...

    @property
    def capacity(self) -> int:
        """The most tokens the cache can ever hold (the model's context)."""
        ...

    def truncate(self, length: int) -> None:
        """Forget everything after `length` tokens; exact, so drafts can be rolled back."""
        ...


@runtime_checkable
class LanguageModel(Protocol):
    capabilities: Capability
    vocab_size: int
    context_length: int

    def new_cache(self) -> KVCache: ...

    def forward(self, tokens: Sequence[int], cache: KVCache, *, last_only: bool = False) -> np.ndarray:
        """Append `tokens` to `cache`; return float32 logits of shape (len(tokens), vocab), or
        (1, vocab) for the last position when `last_only`."""
        ...


class Tokenizer(Protocol):
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str: ...
