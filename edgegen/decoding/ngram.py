"""An n-gram store: counts of (context, next token) for orders 2-6, built from local text with a
model's tokenizer and kept as plain numpy arrays (no pickle), memory-mapped when read.

Per order n, contexts of n − 1 tokens are keyed by a uint64 (exact packing when it fits in 64 bits,
else a 64-bit mix), sorted; each context has its total count and a run of (next token, count)
pairs sorted by token. P_n(x | context) = count(context, x) / total(context), the maximum-likelihood
estimate; a context never seen gives nothing (Superposed Decoding's geometric mixture reads that as
no support). Pruning keeps the `top` most frequent successors per context and drops rare pairs of
long contexts, while totals stay those of the full counts.

    store/
      edgegen.json          kind "ngram-store", orders, vocab size, tokenizer fingerprint, pruning
      order{n}.keys.npy     uint64 (contexts,)       sorted context keys
      order{n}.totals.npy   uint32 (contexts,)       count of each context
      order{n}.offsets.npy  uint32 (contexts + 1,)   where its successors start in next / counts
      order{n}.next.npy     uint16 (pairs,)          successor token ids, ascending per context
                                                     (uint32 for vocabularies over 65,536)
      order{n}.counts.npy   uint32 (pairs,)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from edgegen.core.errors import ConfigError

ORDERS = (2, 3, 4, 5, 6)
KIND = "ngram-store"
FORMAT_VERSION = 1
_PARTS = ("keys", "totals", "offsets", "next", "counts")
_MIX = np.uint64(0x9E3779B97F4A7C15)


def fingerprint(vocabulary: dict[str, int]) -> str:
    """A tokenizer's identity for the store: sha256 of its (token, id) pairs."""
    return hashlib.sha256(json.dumps(sorted(vocabulary.items()), ensure_ascii=False).encode()).hexdigest()


def context_keys(windows: np.ndarray, vocab_size: int) -> np.ndarray:
    """uint64 keys of context rows (m, n − 1): exact base-V packing when it fits, else a hash."""
    windows = windows.astype(np.uint64)
    bits = max(int(vocab_size - 1).bit_length(), 1)
    if bits * windows.shape[1] <= 64:
        keys = np.zeros(len(windows), dtype=np.uint64)
        for column in windows.T:
            keys = (keys << np.uint64(bits)) | column
        return keys
    keys = np.full(len(windows), np.uint64(0xCBF29CE484222325), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for column in windows.T:
            keys = (keys ^ (column + np.uint64(1))) * _MIX
            keys ^= keys >> np.uint64(29)
    return keys


def count_order(sequences: Iterable[np.ndarray], n: int, vocab_size: int, *, top: int, min_count: int) -> dict:
    """The arrays of one order from token sequences (documents never span each other)."""
    counter = OrderCounter(n, vocab_size)
    for seq in sequences:
        counter.add(np.asarray(seq))
    return counter.arrays(top=top, min_count=min_count)


class OrderCounter:
    """Counts of one order's (context, next token) pairs, fed run by run: pairs are buffered and
    merged into one sorted table once the buffer holds `flush_pairs` or half the table's size
    (so merging stays linear overall), so memory follows the number of distinct pairs (what the
    store holds before pruning), not the length of the corpus."""

    def __init__(self, n: int, vocab_size: int, flush_pairs: int = 1 << 20):
        self.n, self.vocab_size, self.flush_pairs = n, vocab_size, flush_pairs
        self.keys, self.next = np.zeros(0, np.uint64), np.zeros(0, np.uint64)
        self.counts = np.zeros(0, np.int64)
        self._buffer: list[tuple[np.ndarray, np.ndarray]] = []
        self._buffered = 0

    def add(self, tokens: np.ndarray) -> None:
        """Count every window of `tokens` (one contiguous run of a document)."""
        if len(tokens) < self.n:
            return
        win = np.lib.stride_tricks.sliding_window_view(tokens, self.n)
        self._buffer.append((context_keys(win[:, :-1], self.vocab_size), win[:, -1].astype(np.uint64)))
        self._buffered += len(win)
        if self._buffered >= max(self.flush_pairs, len(self.keys) // 2):
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        keys = np.concatenate([self.keys, *(k for k, _ in self._buffer)])
        nxt = np.concatenate([self.next, *(x for _, x in self._buffer)])
        counts = np.concatenate([self.counts, np.ones(self._buffered, np.int64)])
        self._buffer, self._buffered = [], 0
        order = np.lexsort((nxt, keys))  # by key, then by next token
        keys, nxt, counts = keys[order], nxt[order], counts[order]
        starts = np.flatnonzero(np.r_[True, (keys[1:] != keys[:-1]) | (nxt[1:] != nxt[:-1])]) if len(keys) else \
            np.zeros(0, np.int64)
        self.keys, self.next = keys[starts], nxt[starts]
        self.counts = np.add.reduceat(counts, starts) if len(starts) else counts

    def arrays(self, *, top: int, min_count: int) -> dict:
        """The store's arrays of this order, pruned."""
        self._flush()
        if not len(self.keys):
            return _empty(self.vocab_size)
        pair_keys, nxt, counts = self.keys, self.next, self.counts
        keys, starts = np.unique(pair_keys, return_index=True)
        totals = np.add.reduceat(counts, starts).astype(np.uint32)
        keep = _prune(pair_keys, counts, starts, top, min_count)
        pair_keys, nxt, counts = pair_keys[keep], nxt[keep], counts[keep]
        alive = np.isin(keys, pair_keys)  # a context whose successors were all pruned can answer nothing
        keys, totals = keys[alive], totals[alive]
        offsets = np.append(np.searchsorted(pair_keys, keys, side="left"), len(pair_keys)).astype(np.uint32)
        return {"keys": keys, "totals": totals, "offsets": offsets, "next": nxt.astype(_next_dtype(self.vocab_size)),
                "counts": counts.astype(np.uint32)}


def _next_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def _prune(keys: np.ndarray, counts: np.ndarray, starts: np.ndarray, top: int, min_count: int) -> np.ndarray:
    """Keep pairs with count ≥ min_count that are among their context's `top` most frequent."""
    group = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(keys))))
    order = np.lexsort((-counts, group))  # by context, then by count descending
    rank = np.empty(len(keys), dtype=np.int64)
    rank[order] = np.arange(len(keys)) - starts[group[order]]
    return (rank < top) & (counts >= min_count)


def _empty(vocab_size: int) -> dict:
    return {"keys": np.zeros(0, np.uint64), "totals": np.zeros(0, np.uint32), "offsets": np.zeros(1, np.uint32),
            "next": np.zeros(0, _next_dtype(vocab_size)), "counts": np.zeros(0, np.uint32)}


def build(documents: Iterable[np.ndarray | Iterable[np.ndarray]], folder: Path, *, vocab_size: int,
          tokenizer_fingerprint: str, sources: list[str], top: int = 16, min_count: dict[int, int] | None = None,
          on_tokens: Callable[[int], None] = lambda n: None) -> dict:
    """Write a store into `folder` (an empty or new folder; the caller makes it atomic) and return
    its metadata (edgegen.json). Each
    document is an array of token ids, or an iterable of arrays (its blocks, in order: a
    streamed document); n-grams span the blocks of a document, never two documents."""
    min_count = min_count or {2: 1, 3: 2, 4: 2, 5: 2, 6: 2}
    counters = {n: OrderCounter(n, vocab_size) for n in ORDERS}
    tokens = 0
    for document in documents:
        carry = np.zeros(0, np.int64)  # the document's last max(ORDERS) − 1 tokens
        for block in ([document] if isinstance(document, np.ndarray) else document):
            block = np.asarray(block, dtype=np.int64)
            for n, counter in counters.items():
                counter.add(np.concatenate([carry[len(carry) - min(n - 1, len(carry)):], block]))
            carry = np.concatenate([carry, block])[-(max(ORDERS) - 1):]
            tokens += len(block)
            on_tokens(len(block))
    stats = {}
    for n, counter in counters.items():
        arrays = counter.arrays(top=top, min_count=min_count.get(n, 1))
        for part in _PARTS:
            np.save(folder / f"order{n}.{part}.npy", arrays[part], allow_pickle=False)
        stats[str(n)] = {"contexts": int(len(arrays["keys"])), "pairs": int(len(arrays["next"]))}
    meta = {"format_version": FORMAT_VERSION, "kind": KIND, "orders": list(ORDERS), "vocab_size": int(vocab_size),
            "tokenizer_sha256": tokenizer_fingerprint, "tokens": tokens,
            "sources": sources, "pruning": {"top": top, "min_count": {str(k): v for k, v in min_count.items()}},
            "sizes": stats}
    (folder / "edgegen.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return meta


class NgramStore:
    """A store opened for lookups; every file is checked before it is used."""

    def __init__(self, folder: str | Path, *, vocab_size: int | None = None, tokenizer_fingerprint: str | None = None):
        self.folder = Path(folder)
        self.meta = _read_meta(self.folder)
        if tokenizer_fingerprint is not None and self.meta.get("tokenizer_sha256") != tokenizer_fingerprint:
            raise ConfigError(f"the n-gram store {self.folder} was built with another tokenizer than this model's; "
                              "build one with `edgegen ngram build --model MODEL`")
        if vocab_size is not None and self.meta.get("vocab_size") != vocab_size:
            raise ConfigError(f"the n-gram store {self.folder} has vocabulary size {self.meta.get('vocab_size')}, "
                              f"the model {vocab_size}; build one for this model")
        self.vocab_size = int(self.meta["vocab_size"])
        self.orders = {n: _load_order(self.folder, n, self.vocab_size) for n in self.meta["orders"]}

    def probs(self, context: Sequence[int], candidates: np.ndarray, n: int) -> np.ndarray:
        """P_n(candidate | the last n − 1 tokens of `context`) for each candidate (0 where unseen)."""
        out = np.zeros(len(candidates))
        if n not in self.orders or len(context) < n - 1:
            return out
        keys, totals, offsets, nxt, counts = self.orders[n]
        key = context_keys(np.asarray(context[len(context) - (n - 1):], dtype=np.int64)[None], self.vocab_size)[0]
        i = int(np.searchsorted(keys, key))
        if i >= len(keys) or keys[i] != key:
            return out
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        if hi == lo:  # every successor pruned away: the context's total remains, its pairs do not
            return out
        successors = nxt[lo:hi].astype(np.int64)
        at = np.searchsorted(successors, candidates)
        found = (at < len(successors)) & (successors[np.minimum(at, len(successors) - 1)] == candidates)
        out[found] = counts[lo:hi][at[found]] / float(totals[i])
        return out


def _read_meta(folder: Path) -> dict:
    path = folder / "edgegen.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{folder} is not an n-gram store (no edgegen.json); build one with `edgegen ngram build`") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{path} is corrupt ({exc}); build the store again") from None
    if not isinstance(meta, dict) or meta.get("kind") != KIND:
        raise ConfigError(f"{folder} is not an n-gram store; build one with `edgegen ngram build`")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ConfigError(f"{folder} was written by a newer edgegen; upgrade edgegen")
    if not isinstance(meta.get("orders"), list) or not isinstance(meta.get("vocab_size"), int):
        raise ConfigError(f"{path} is corrupt (no orders or vocabulary size); build the store again")
    return meta


def _load_order(folder: Path, n: int, vocab_size: int) -> tuple[np.ndarray, ...]:
    dtypes = {"keys": np.uint64, "totals": np.uint32, "offsets": np.uint32, "next": _next_dtype(vocab_size),
              "counts": np.uint32}
    arrays = []
    for part in _PARTS:
        path = folder / f"order{n}.{part}.npy"
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path.name} in the n-gram store {folder} is missing or corrupt ({exc}); "
                              "build the store again") from None
        if array.dtype != dtypes[part] or array.ndim != 1:
            raise ConfigError(f"{path.name} in the n-gram store {folder} is corrupt; build the store again")
        arrays.append(array)
    keys, totals, offsets, nxt, counts = arrays
    if len(totals) != len(keys) or len(offsets) != len(keys) + 1 or len(counts) != len(nxt) or \
            offsets[0] != 0 or offsets[-1] != len(nxt) or np.any(offsets[1:] < offsets[:-1]):
        raise ConfigError(f"order {n} of the n-gram store {folder} is inconsistent; build the store again")
    return keys, totals, offsets, nxt, counts
