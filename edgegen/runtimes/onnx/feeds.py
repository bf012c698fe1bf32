"""The small inputs of a causal graph's forward and its logits output, bound once per I/O binding.

A forward used to bind five fresh arrays (token ids, `seqlens_k`, `total_sequence_length`,
`logits_to_keep`, empty `inputs_embeds`) and to read the logits through `get_outputs()`, which wraps
every output, the cache's presents included: 47 µs of Python and binding per forward, a fifth of
a tiny draft model's step (17 µs now). Here each input is an array bound once, whose values a
forward writes in place (the binding reads them when it runs, as it does the cache's buffers),
and the logits land in an array bound once per number of rows kept (short feeds only: `KEEP`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

KEEP = 16  # feeds of at most this many tokens, and logits of at most this many rows, keep their arrays


class StepFeeds:
    def __init__(self, binding, ort, hidden: int, vocab: int):
        self.binding, self.ort, self.vocab = binding, ort, vocab
        self.seqlens = np.zeros(1, np.int32)
        self.total = np.zeros((), np.int32)
        self.keep = np.zeros(1, np.int64)
        self.no_embeds = np.zeros((1, 0, hidden), np.float32)
        for name, array in (("seqlens_k", self.seqlens), ("total_sequence_length", self.total),
                            ("logits_to_keep", self.keep), ("inputs_embeds", self.no_embeds)):
            self._bind_input(name, array)
        self._ids: dict[int, np.ndarray] = {}  # token count -> its (1, n) array
        self._logits: dict[int, np.ndarray] = {}  # rows kept -> its (1, rows, vocab) array
        self._bound_ids = self._bound_rows = None
        self._embeds_bound = False

    def _bind_input(self, name: str, array: np.ndarray) -> None:
        self.binding.bind_ortvalue_input(name, self.ort.OrtValue.ortvalue_from_numpy(array))

    def set(self, tokens: Sequence[int], total: int, rows: int, embeds: np.ndarray | None) -> np.ndarray:
        """Write one forward's inputs; returns the array its logits (1, rows, vocab) will fill.
        Only short feeds keep their arrays (steps and verifications, where binding costs count); a
        long one (a prefill chunk, all rows of a long text) binds arrays of its own, so that the
        cache does not hold a logits array per long length for its lifetime."""
        n = len(tokens)
        ids = _kept(self._ids, n, (1, n), np.int64)
        ids[0] = tokens
        if self._bound_ids != n or n > KEEP:
            self._bind_input("input_ids", ids)
            self._bound_ids = n
        if embeds is not None:  # given embeddings: a rare feed, bound as it comes
            self.binding.bind_cpu_input("inputs_embeds", embeds)
            self._embeds_bound = True
        elif self._embeds_bound:
            self._bind_input("inputs_embeds", self.no_embeds)
            self._embeds_bound = False
        self.seqlens[0] = total - 1
        self.total[...] = total
        self.keep[0] = rows
        logits = _kept(self._logits, rows, (1, rows, self.vocab), np.float32)
        if self._bound_rows != rows or rows > KEEP:
            self.binding.bind_ortvalue_output("logits", self.ort.OrtValue.ortvalue_from_numpy(logits))
            self._bound_rows = rows
        return logits


def _kept(store: dict[int, np.ndarray], size: int, shape: tuple[int, ...], dtype) -> np.ndarray:
    """The array kept for `size`, or a new one (kept too when `size` is at most `KEEP`)."""
    array = store.get(size)
    if array is None:
        array = np.zeros(shape, dtype)
        if size <= KEEP:
            store[size] = array
    return array
