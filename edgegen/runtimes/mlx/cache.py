"""A KV cache for MLX: one buffer per layer, grown in chunks, with exact truncation."""

from __future__ import annotations

import mlx.core as mx

CHUNK = 256  # tokens added per growth; no reallocation per token


class MLXKVCache:
    """Per layer, keys and values of shape (B, Hkv, capacity, Dh); `length` are valid."""

    def __init__(self, num_layers: int, max_length: int):
        self._keys: list[mx.array | None] = [None] * num_layers
        self._values: list[mx.array | None] = [None] * num_layers
        self._length = 0
        self._max = max_length

    @property
    def length(self) -> int:
        return self._length

    @property
    def capacity(self) -> int:
        return self._max

    def truncate(self, length: int) -> None:
        if not 0 <= length <= self._length:
            raise ValueError(f"cannot truncate a cache of {self._length} tokens to {length}")
        self._length = length  # later writes overwrite the forgotten tail

    def advance(self, n: int) -> None:
        """Called once per forward pass, after every layer has written its `n` new entries."""
        self._length += n

    def update(self, layer: int, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        """Write new (B, Hkv, L, Dh) keys/values at `length`; return all valid ones."""
        start, end = self._length, self._length + k.shape[2]
        if self._keys[layer] is None or end > self._keys[layer].shape[2]:
            self._grow(layer, k, v, end)
        self._keys[layer][..., start:end, :] = k
        self._values[layer][..., start:end, :] = v
        return self._keys[layer][..., :end, :], self._values[layer][..., :end, :]

    def _grow(self, layer: int, k: mx.array, v: mx.array, needed: int) -> None:
        B, H, _, D = k.shape
        size = min(self._max, -(-needed // CHUNK) * CHUNK)
        old_k, old_v = self._keys[layer], self._values[layer]
        new_k = mx.zeros((B, H, size, D), dtype=k.dtype)
        new_v = mx.zeros((B, H, size, v.shape[3]), dtype=v.dtype)
        if old_k is not None:
            new_k[..., : self._length, :] = old_k[..., : self._length, :]
            new_v[..., : self._length, :] = old_v[..., : self._length, :]
        self._keys[layer], self._values[layer] = new_k, new_v
