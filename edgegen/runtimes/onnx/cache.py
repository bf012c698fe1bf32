"""The ONNX KV cache: per layer one BNSH buffer that GroupQueryAttention reads as `past` and writes
as `present` in place (shared buffer), grown in chunks, truncated exactly.

The buffer holds float32, float16, int8 or packed int4 (two values per byte) values, following the
graph variant the cache was made for; quantized variants also carry their static per-channel
scales, bound once with the buffers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgegen.core.protocols import KVSpec

CHUNK = 256  # tokens added per growth
# graph variant -> (numpy element type, values per element)
LAYOUTS = {"float": (np.float32, 1), "kv16": (np.float16, 1), "kv8": (np.int8, 1), "kv4": (np.uint8, 2)}


def variant_of(spec: KVSpec | None) -> str:
    return "float" if spec is None or spec.bits is None else f"kv{spec.bits}"


class OnnxKVCache:
    def __init__(self, num_layers: int, kv_heads: int, head_dim: int, max_length: int, variant: str = "float",
                 session: Any = None, scales: dict[str, np.ndarray] | None = None):
        self.num_layers, self.kv_heads, self.head_dim = num_layers, kv_heads, head_dim
        self.variant, self.session, self.scales = variant, session, scales or {}
        self.dtype, per_element = LAYOUTS[variant]
        self.last_dim = head_dim // per_element
        self._max = max_length
        self._length = 0
        self.buffers: list[tuple[np.ndarray, np.ndarray]] = []
        self.generation = 0  # bumped whenever the buffers are replaced (the runtime rebinds them)
        self.binding = None  # the runtime's I/O binding of these buffers, reused across steps
        self._allocate(0)

    @property
    def length(self) -> int:
        return self._length

    @property
    def capacity(self) -> int:
        return self._max

    @property
    def allocated(self) -> int:
        return self.buffers[0][0].shape[2]

    @property
    def nbytes(self) -> int:
        """Bytes the buffers occupy now (allocated capacity, not just `length`)."""
        return sum(k.nbytes + v.nbytes for k, v in self.buffers)

    def truncate(self, length: int) -> None:
        if not 0 <= length <= self._length:
            raise ValueError(f"cannot truncate a cache of {self._length} tokens to {length}")
        self._length = length  # the attention reads only `length` entries; later writes overwrite

    def reserve(self, extra: int, spare: int = 0) -> None:
        """Make room for `extra` more tokens before a forward pass writes them, and for `spare`
        rows after them that the pass may scribble on (a grouped decode step's key copies)."""
        needed = self._length + extra + spare
        if needed > self.allocated:
            self._allocate(min(self._max + spare, -(-needed // CHUNK) * CHUNK))

    def advance(self, n: int) -> None:
        self._length += n

    def _allocate(self, size: int) -> None:
        """Every layer's buffers at `size` tokens, the first `length` kept. One layer at a time, with
        the old binding (which holds the old buffers) dropped first: growing then holds the old
        cache plus one layer's new buffers, not two whole caches (at 16k tokens of an fp32 cache
        that was 400 MB more peak memory)."""
        size = max(size, 1)  # a zero-length buffer has no address to share
        shape = (1, self.kv_heads, size, self.last_dim)  # (B, Hkv, capacity, Dh or Dh/2)
        self.binding = None
        old, self.buffers = self.buffers or [None] * self.num_layers, []
        for layer in range(self.num_layers):
            k, v = np.zeros(shape, self.dtype), np.zeros(shape, self.dtype)
            if old[layer] is not None:
                k[:, :, : self._length] = old[layer][0][:, :, : self._length]
                v[:, :, : self._length] = old[layer][1][:, :, : self._length]
            old[layer] = None  # freed now
            self.buffers.append((k, v))
        self.generation += 1
