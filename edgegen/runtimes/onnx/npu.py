"""An NPU bundle (converters/onnx/npu.py) served as a `LanguageModel`.

The host keeps what the NPU graphs do not: the embedding table (inputs go in as embeddings), RoPE's
cos/sin for each input's position, the attention mask (any `Feed` pattern, as data) and the KV
cache, fixed-size buffers the graphs read whole and whose new rows the host writes after a run.
A feed of one input runs the step graph; up to C inputs the chunk graph, padded; longer committed
feeds run chunk by chunk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from edgegen.core import registry
from edgegen.core.errors import CapabilityError, ContextOverflow, InferenceError
from edgegen.core.manifest import Manifest
from edgegen.core.protocols import Capability, Feed, KVSpec
from edgegen.runtimes.onnx.session import create_npu_session, ort_message

NEG = -30000.0  # "may not see": finite in float16, and exp() of it is 0 in float32


class NpuCache:
    """Per layer a key and a value buffer (1, Hkv, N, Dh), written by the host, read whole."""

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


class NpuLanguageModel:
    capabilities = (Capability.LOGITS | Capability.ROLLBACK | Capability.MULTI_TOKEN | Capability.SCORE_ONLY
                    | Capability.EMBEDDINGS | Capability.POSITIONS | Capability.BLOCK_ATTENTION)

    def __init__(self, folder: Path, manifest: Manifest, provider: str | None = None, threads: int | None = None):
        from safetensors.numpy import load_file

        self.folder, self.manifest = folder, manifest
        self.config = c = registry.arch_module(manifest.architecture).parse_config(manifest.config)
        self.vocab_size, self.hidden_size = c.vocab_size, c.hidden_size
        self.capacity, self.chunk = int(manifest.npu["context"]), int(manifest.npu["chunk"])
        self.context_length = self.capacity
        self.provider = provider or "cpu"
        files = manifest.files
        self.sessions = {size: create_npu_session(folder / files[key], self.provider, threads)
                         for size, key in ((1, "npu_step"), (self.chunk, "npu_chunk"))}
        self.description = f"the NPU bundle on ONNX Runtime ({self.provider})"
        self._table = load_file(str(folder / files["npu_embed"]))["embed_tokens"]
        self._inv_freq = c.inv_freq()
        self._group = c.num_attention_heads // c.num_key_value_heads
        self._outputs = ["logits"] + [f"new_{kv}.{i}" for kv in ("key", "value") for i in range(c.num_hidden_layers)]

    def new_cache(self, kv: KVSpec | None = None) -> NpuCache:
        if kv is not None and kv.bits is not None:
            raise CapabilityError("an NPU bundle keeps a float32 KV cache; --kv-bits is not offered on it")
        c = self.config
        return NpuCache(c.num_hidden_layers, c.num_key_value_heads, c.head_dim, self.capacity)

    def embed(self, tokens: Sequence[int]) -> np.ndarray:
        return self._table[np.asarray(list(tokens), dtype=np.int64)].astype(np.float32)

    def peak_memory_mb(self) -> float:
        return 0.0

    # ------------------------------------------------------------------ forward
    def forward(self, feed: Feed, cache: NpuCache) -> np.ndarray:
        n, past = feed.length, cache.length
        if past + n > self.capacity:
            raise ContextOverflow(f"{past + n} positions do not fit this NPU bundle's cache of {self.capacity}; "
                                  "convert with a larger --context")
        x = self._inputs(feed)
        positions = np.arange(past, past + n) if feed.positions is None else np.asarray(feed.positions)
        allowed = feed.attention_mask(past)
        if allowed is None:
            allowed = np.arange(past + n)[None, :] <= (past + np.arange(n))[:, None]
        start, end = feed.row_range()
        if n <= self.chunk:
            logits = self._run(x, positions, allowed, cache, feed.commit)
            return logits[start:end]
        if not feed.commit or feed.blocks is not None:
            raise CapabilityError(f"this NPU bundle runs at most {self.chunk} inputs at once without keeping them, "
                                  f"or in one attention block; convert with a larger --chunk")
        rows = []
        for at in range(0, n, self.chunk):  # causal: each chunk sees the ones before through the cache
            part = slice(at, min(at + self.chunk, n))
            seen = np.concatenate([allowed[part, :past + at], allowed[part, past + at:past + part.stop]], axis=1)
            logits = self._run(x[part], positions[part], seen, cache, True)
            lo, hi = max(start - at, 0), min(end - at, part.stop - at)
            if lo < hi:
                rows.append(logits[lo:hi])
        return np.concatenate(rows) if rows else np.zeros((0, self.vocab_size), np.float32)

    def _inputs(self, feed: Feed) -> np.ndarray:
        parts = [self.embed(feed.tokens)] if len(feed.tokens) else []
        if feed.embeddings is not None:
            parts.append(np.asarray(feed.embeddings, np.float32).reshape(-1, self.hidden_size))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _run(self, x: np.ndarray, positions: np.ndarray, allowed: np.ndarray, cache: NpuCache,
             commit: bool) -> np.ndarray:
        """One graph run over m ≤ C inputs; `allowed` (m, past + m). Returns (m, vocab) logits."""
        m, past = len(x), cache.length
        size = 1 if m == 1 else self.chunk
        N = self.capacity
        mask = np.full((size, N + size), NEG, np.float32)
        mask[:m, :past] = np.where(allowed[:, :past], 0.0, NEG)
        mask[:m, N:N + m] = np.where(allowed[:, past:past + m], 0.0, NEG)
        mask[np.arange(m, size), N + np.arange(m, size)] = 0.0  # padding rows see themselves only
        embeds = np.zeros((1, size, self.hidden_size), np.float32)
        embeds[0, :m] = x
        pos = np.zeros(size, np.float64)
        pos[:m] = positions
        angles = pos[:, None] * self._inv_freq[None, :]  # (size, Dh/2)
        cos, sin = np.cos(angles), np.sin(angles)
        rows = np.tile(mask, (self._group, 1))  # the G query heads of a KV head read the same mask
        feeds = {"inputs_embeds": embeds, "attention_mask": rows[None, None],
                 "cos": np.concatenate([cos, cos], -1)[None, None].astype(np.float32),
                 "sin": np.concatenate([-sin, sin], -1)[None, None].astype(np.float32)}  # signed: see npu.py
        for i, (k, v) in enumerate(zip(cache.keys, cache.values)):
            feeds[f"past_key.{i}"], feeds[f"past_value.{i}"] = k, v
        try:
            out = self.sessions[size].run(self._outputs, feeds)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise InferenceError(f"ONNX Runtime failed to run the NPU bundle ({ort_message(exc)}); "
                                 "if its files were changed, convert the model again") from None
        if commit:
            layers = self.config.num_hidden_layers
            cache.write(out[1:1 + layers], out[1 + layers:], m)
        return out[0][0, :m]
