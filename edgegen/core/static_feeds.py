"""The host side of a static-shape decoder graph (an NPU bundle, converters/onnx/npu.py): its KV
cache buffers and the inputs of one run. The runtime serves models with it; the converter
calibrates quantized bundles with it, so both feed the graphs the same way. numpy only.
"""

from __future__ import annotations

import dataclasses

import numpy as np

NEG = {"fp32": -30000.0, "fp16": -30000.0, "w8a16": -100.0, "w4a16": -100.0}  # "may not see", per precision: finite in
# float16; a quantized mask needs a small range (its 16 bits also cover the scores it is added to),
# and e^-100 is still 0 next to any visible key's weight


class HostCache:
    """Per layer a key and a value buffer (1, Hkv, N, Dh) the graphs read whole; the host writes
    each run's new rows after it."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, capacity: int):
        shape = (1, kv_heads, capacity, head_dim)
        self.keys = [np.zeros(shape, np.float32) for _ in range(layers)]
        self.values = [np.zeros(shape, np.float32) for _ in range(layers)]
        self._capacity, self._length = capacity, 0

    @property
    def length(self) -> int:
        return self._length

    @property
    def capacity(self) -> int:
        return self._capacity

    def truncate(self, length: int) -> None:
        self._length = min(self._length, max(0, length))  # rows past the length are masked, never read

    def write(self, new_keys: list[np.ndarray], new_values: list[np.ndarray], n: int) -> None:
        """Append the first `n` new positions of each layer's (1, Hkv, C, Dh) outputs."""
        at = self._length
        for buf, new in zip(self.keys + self.values, new_keys + new_values):
            buf[:, :, at:at + n] = new[:, :, :n]
        self._length += n

    def feeds(self) -> dict[str, np.ndarray]:
        out = {}
        for i, (k, v) in enumerate(zip(self.keys, self.values)):
            out[f"past_key.{i}"], out[f"past_value.{i}"] = k, v
        return out


@dataclasses.dataclass(frozen=True)
class StaticShape:
    """What a bundle's graphs expect: `hidden` inputs, `group` query heads per KV head, RoPE's
    inverse frequencies, `capacity` cache slots, the mask value."""

    hidden: int
    group: int
    inv_freq: np.ndarray
    capacity: int
    neg: float

    def inputs(self, x: np.ndarray, positions: np.ndarray, allowed: np.ndarray, past: int,
               size: int) -> dict[str, np.ndarray]:
        """The feeds of one run of the `size`-input graph over m = len(x) ≤ size inputs at
        `positions`; `allowed` (m, past + m) says which cache slots and new inputs each may see."""
        m, N, neg = len(x), self.capacity, self.neg
        mask = np.full((size, N + size), neg, np.float32)
        mask[:m, :past] = np.where(allowed[:, :past], 0.0, neg)
        mask[:m, N:N + m] = np.where(allowed[:, past:past + m], 0.0, neg)
        mask[np.arange(m, size), N + np.arange(m, size)] = 0.0  # padding rows see themselves only
        embeds = np.zeros((1, size, self.hidden), np.float32)
        embeds[0, :m] = x
        pos = np.zeros(size, np.float64)
        pos[:m] = positions
        angles = pos[:, None] * self.inv_freq[None, :]  # (size, Dh/2)
        cos, sin = np.cos(angles), np.sin(angles)
        return {"inputs_embeds": embeds,
                "attention_mask": np.tile(mask, (self.group, 1))[None, None],  # the G query heads of a KV head
                "cos": np.concatenate([cos, cos], -1)[None, None].astype(np.float32),
                "sin": np.concatenate([-sin, sin], -1)[None, None].astype(np.float32)}  # signed: rotate_half


def causal(past: int, n: int) -> np.ndarray:
    """bool (n, past + n): plain causal attention over a cache of `past`."""
    return np.arange(past + n)[None, :] <= (past + np.arange(n))[:, None]
