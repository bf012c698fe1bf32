"""KV caches for MLX: one buffer per layer, grown in chunks, with exact truncation. Each cache also
runs the attention over what it holds, so a quantized cache attends on its packed values.

`MLXKVCache` keeps the model's float type (or fp16). `QuantizedMLXKVCache` stores keys and values
with `mx.quantize` (per token, groups of `group_size` channels, an fp16 scale and bias per group)
and attends with `mx.quantized_matmul`, never through a dequantized copy. Every token is quantized
when it is written and its stored form depends on nothing else, so appending, truncating and
appending again gives exactly the cache that appending once would have given.
"""

from __future__ import annotations

import dataclasses

import mlx.core as mx

from edgegen.core.protocols import KVSpec

CHUNK = 256  # tokens added per growth; no reallocation per token


def _capacity(needed: int, limit: int) -> int:
    return min(limit, -(-needed // CHUNK) * CHUNK)


class _Cache:
    def __init__(self, num_layers: int, max_length: int):
        self.num_layers = num_layers
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
        """Called once per committed forward pass, after every layer has written its `n` entries."""
        self._length += n


class MLXKVCache(_Cache):
    """Per layer, keys and values of shape (B, Hkv, capacity, Dh); `length` are valid."""

    def __init__(self, num_layers: int, max_length: int, dtype=None):
        super().__init__(num_layers, max_length)
        self.dtype = dtype  # None: the model's own float type
        self._keys: list[mx.array | None] = [None] * num_layers
        self._values: list[mx.array | None] = [None] * num_layers

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._keys + self._values if a is not None)

    def attend(self, layer: int, q: mx.array, k: mx.array, v: mx.array, scale: float, mask) -> mx.array:
        """Write the new (B, Hkv, L, Dh) keys/values at `length`, attend q (B, H, L, Dh) over all."""
        if self.dtype is not None:
            k, v = k.astype(self.dtype), v.astype(self.dtype)
        keys, values = self._write(layer, k, v)
        if mask is not None and not isinstance(mask, str):
            mask = mask.astype(keys.dtype)
        out = mx.fast.scaled_dot_product_attention(q.astype(keys.dtype), keys, values, scale=scale, mask=mask)
        return out.astype(q.dtype)

    def _write(self, layer: int, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        start, end = self._length, self._length + k.shape[2]
        if self._keys[layer] is None or end > self._keys[layer].shape[2]:
            self._grow(layer, k, v, end)
        self._keys[layer][..., start:end, :] = k
        self._values[layer][..., start:end, :] = v
        return self._keys[layer][..., :end, :], self._values[layer][..., :end, :]

    def _grow(self, layer: int, k: mx.array, v: mx.array, needed: int) -> None:
        B, H, _, D = k.shape
        size = _capacity(needed, self._max)
        old_k, old_v = self._keys[layer], self._values[layer]
        new_k = mx.zeros((B, H, size, D), dtype=k.dtype)
        new_v = mx.zeros((B, H, size, v.shape[3]), dtype=v.dtype)
        if old_k is not None:
            new_k[..., : self._length, :] = old_k[..., : self._length, :]
            new_v[..., : self._length, :] = old_v[..., : self._length, :]
        self._keys[layer], self._values[layer] = new_k, new_v


class QuantizedMLXKVCache(_Cache):
    """Keys and values as (packed uint32, fp16 scales, fp16 biases) triples, quantized per token."""

    def __init__(self, num_layers: int, max_length: int, spec: KVSpec):
        super().__init__(num_layers, max_length)
        self.bits, self.group_size = spec.bits, spec.group_size
        self._store: list[list[list[mx.array]] | None] = [None] * num_layers  # [keys, values] of triples

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for entry in self._store if entry for triple in entry for a in triple)

    def attend(self, layer: int, q: mx.array, k: mx.array, v: mx.array, scale: float, mask) -> mx.array:
        """The inputs attend to the stored keys and values (quantized) and to their own (full
        precision: a block being denoised never goes through quantization)."""
        past = self._length
        keys, values = self._write(layer, k, v)
        B, H, L, D = q.shape
        kv_heads = k.shape[1]
        q = (q * scale).reshape(B, kv_heads, H // kv_heads, L, D)  # (B, Hkv, rep, L, Dh)
        k_new, v_new = mx.expand_dims(k, axis=2).astype(q.dtype), mx.expand_dims(v, axis=2).astype(q.dtype)
        scores = q @ k_new.swapaxes(-1, -2)  # (B, Hkv, rep, L, L)
        old = [[mx.expand_dims(a[..., :past, :], axis=2) for a in triple] for triple in (keys, values)]
        if past:
            stored = mx.quantized_matmul(q, *old[0], transpose=True, group_size=self.group_size, bits=self.bits)
            scores = mx.concatenate([stored, scores], axis=-1)  # (B, Hkv, rep, L, past + L)
        if isinstance(mask, str):  # "causal": input i sits at past + i
            allowed = mx.arange(past + L)[None] <= (mx.arange(L) + past)[:, None]
            scores = mx.where(allowed, scores, mx.array(-mx.inf, scores.dtype))
        elif mask is not None:
            scores = scores + mask.astype(scores.dtype)
        weights = mx.softmax(scores, axis=-1, precise=True)
        out = weights[..., past:] @ v_new
        if past:
            out = out + mx.quantized_matmul(weights[..., :past], *old[1], transpose=False,
                                            group_size=self.group_size, bits=self.bits)
        return out.reshape(B, H, L, D).astype(k.dtype)

    def _write(self, layer: int, k: mx.array, v: mx.array):
        start, end = self._length, self._length + k.shape[2]
        if self._store[layer] is None or end > self._store[layer][0][0].shape[2]:
            self._grow(layer, k, end)
        entry = self._store[layer]
        for stored, new in zip(entry, (k, v)):
            packed = mx.quantize(new.astype(mx.float16), group_size=self.group_size, bits=self.bits)
            for buf, part in zip(stored, packed):
                buf[..., start:end, :] = part
        return [[a[..., :end, :] for a in triple] for triple in entry]

    def _grow(self, layer: int, k: mx.array, needed: int) -> None:
        B, H, _, D = k.shape
        size = _capacity(needed, self._max)
        shapes = [(B, H, size, D * self.bits // 32), (B, H, size, D // self.group_size), (B, H, size, D // self.group_size)]
        dtypes = [mx.uint32, mx.float16, mx.float16]
        new = [[mx.zeros(s, dtype=t) for s, t in zip(shapes, dtypes)] for _ in range(2)]
        old = self._store[layer]
        if old is not None:
            for old_triple, new_triple in zip(old, new):
                for a, b in zip(old_triple, new_triple):
                    b[..., : self._length, :] = a[..., : self._length, :]
        self._store[layer] = new


def make_cache(num_layers: int, max_length: int, spec: KVSpec | None, head_dim: int):
    """The cache for `spec`: float (model type or fp16) or quantized."""
    if spec is None or spec.bits is None:
        return MLXKVCache(num_layers, max_length)
    if spec.bits == 16:
        return MLXKVCache(num_layers, max_length, dtype=mx.float16)
    if head_dim % spec.group_size:  # groups never span two heads: take the largest that fits
        fits = [g for g in (128, 64, 32) if g <= spec.group_size and head_dim % g == 0]
        if not fits:
            from edgegen.core.errors import CapabilityError

            raise CapabilityError(f"a quantized MLX KV cache needs head_dim divisible by 32 (this model has "
                                  f"{head_dim}); use the float cache or --kv-bits 16")
        spec = dataclasses.replace(spec, group_size=fits[0])
    return QuantizedMLXKVCache(num_layers, max_length, spec)
