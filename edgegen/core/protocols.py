"""The contracts that decoding strategies program against. Runtimes implement them; strategies
never import a backend.

One primitive serves every strategy: `LanguageModel.forward(Feed, cache)`. A `Feed` says what runs
(token ids and/or input embeddings), where it sits (RoPE positions), what it may see (causal, or
attention groups among the new inputs, or cache slots hidden from it), whether its keys and values
stay in the cache (`commit`), and which rows of logits come back. What each strategy needs:

    plain / speculative decoding   tokens, rows, commit=True, cache.truncate (rollback)
    block diffusion                blocks (bidirectional inside a block), commit=False (score a block
                                   without keeping it), positions + hidden (dual cache)
    superposed decoding            embeddings (a weighted mix of token embeddings), model.embed()
    quantized KV caches            new_cache(KVSpec(bits=8 | 4)); same contract as the float cache
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from edgegen.core.errors import CapabilityError


class Capability(enum.Flag):
    """What a model can do; strategies declare what they need and check it when built."""

    NONE = 0
    LOGITS = enum.auto()  # forward() returns logits for every fed position (or the last `rows`)
    ROLLBACK = enum.auto()  # cache.truncate() is exact (speculative decoding needs it)
    MULTI_TOKEN = enum.auto()  # forward() accepts several new inputs over a non-empty cache
    SCORE_ONLY = enum.auto()  # Feed(commit=False): run inputs against the cache without keeping them
    EMBEDDINGS = enum.auto()  # Feed(embeddings=...) and model.embed(ids)
    POSITIONS = enum.auto()  # Feed(positions=...): explicit RoPE positions
    BLOCK_ATTENTION = enum.auto()  # Feed(blocks=..., hidden=...): non-causal attention patterns
    QUANTIZED_KV = enum.auto()  # new_cache(KVSpec(bits=8 or 4))


@dataclasses.dataclass(frozen=True)
class KVSpec:
    """How a KV cache stores keys and values: `bits` None is the runtime's float cache (the
    model's compute type), 16 a 16-bit float cache, 8 and 4 quantized caches."""

    bits: int | None = None  # None | 16 | 8 | 4
    group_size: int = 64  # values per scale, where the scheme groups (MLX; ONNX scales are per channel)

    @property
    def quantized(self) -> bool:
        return self.bits is not None and self.bits < 16


@dataclasses.dataclass(frozen=True)
class Feed:
    """The inputs of one forward pass.

    Inputs are `tokens` followed by `embeddings` ((n, hidden) float32). Input i sits at
    `positions[i]` (default: cache.length + i). `blocks=None` is causal attention; otherwise input i
    sees input j iff blocks[j] <= blocks[i] (all equal: bidirectional), and always sees the cache
    except slots `hidden` = [start, end). With `commit` the inputs' keys and values are appended to
    the cache; without it they are only attended to, and the cache keeps its length. `rows` picks
    the inputs whose logits come back: 0 all of them, n > 0 the last n, (start, end) a range (only
    those rows go through the LM head).
    """

    tokens: Sequence[int] = ()
    embeddings: np.ndarray | None = None
    positions: Sequence[int] | None = None
    blocks: Sequence[int] | None = None
    hidden: tuple[int, int] | None = None
    commit: bool = True
    rows: int | tuple[int, int] = 0

    @property
    def length(self) -> int:
        return len(self.tokens) + (0 if self.embeddings is None else len(self.embeddings))

    def row_range(self) -> tuple[int, int]:
        """[start, end) of the inputs whose logits are returned."""
        if isinstance(self.rows, tuple):
            return self.rows
        n = self.length
        return (n - self.rows, n) if self.rows else (0, n)

    def attention_mask(self, past: int) -> np.ndarray | None:
        """bool (length, past + length): input i may see key j; None for plain causal attention."""
        if self.blocks is None and self.hidden is None:
            return None
        n = self.length
        blocks = np.arange(n) if self.blocks is None else np.asarray(self.blocks)
        mask = np.ones((n, past + n), dtype=bool)
        mask[:, past:] = blocks[None, :] <= blocks[:, None]
        if self.hidden is not None:
            mask[:, self.hidden[0]:self.hidden[1]] = False
        return mask

    def needs(self) -> Capability:
        need = Capability.LOGITS
        if not self.commit:
            need |= Capability.SCORE_ONLY
        if self.embeddings is not None:
            need |= Capability.EMBEDDINGS
        if self.positions is not None:
            need |= Capability.POSITIONS
        if self.blocks is not None or self.hidden is not None:
            need |= Capability.BLOCK_ATTENTION
        return need


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

    def new_cache(self, kv: KVSpec | None = None) -> KVCache: ...

    def forward(self, feed: Feed, cache: KVCache) -> np.ndarray:
        """Run `feed` over `cache`; float32 logits (feed.rows or feed.length, vocab)."""
        ...


class Embedder(Protocol):
    """Models with `Capability.EMBEDDINGS` also give the input embedding of token ids."""

    hidden_size: int

    def embed(self, tokens: Sequence[int]) -> np.ndarray:
        """float32 (len(tokens), hidden): the rows of the input embedding table (dequantized)."""
        ...


def require(model: LanguageModel, needed: Capability, what: str) -> None:
    """Raise a one-line CapabilityError when `model` lacks any of `needed` (checked when a
    strategy is built, not in the middle of a generation)."""
    missing = needed & ~model.capabilities
    if missing:
        names = ", ".join(m.name.lower().replace("_", " ") for m in Capability if m and m in missing)
        raise CapabilityError(f"{what} needs {names}, which {getattr(model, 'description', 'this model')} "
                              "does not offer; convert the model with this edgegen version or choose another strategy")


class TokenConstraint(Protocol):
    """Which tokens may come next so that the generated text stays in a grammar (a JSON schema, a
    regular expression, a Lark grammar). Keyed by the whole history (prompt + generated, as the
    sampler sees it), so one constraint serves every strategy: plain decoding, the verification
    rows of speculative decoding, a draft model's own sampling."""

    def allowed(self, history: Sequence[int]) -> np.ndarray:
        """bool (vocab,): the tokens that may follow `history`."""
        ...

    def valid_prefix(self, history: Sequence[int], tokens: Sequence[int]) -> int:
        """How many of `tokens`, in order after `history`, keep the text in the grammar."""
        ...


class Tokenizer(Protocol):
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str: ...
