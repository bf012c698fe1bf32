"""An NPU bundle (converters/onnx/npu.py) served as a `LanguageModel`.

The host keeps what the NPU graphs do not: the embedding table (inputs go in as embeddings), RoPE's
cos/sin for each input's position, the attention mask (any `Feed` pattern, as data) and the KV
cache, fixed-size buffers the graphs read whole and whose new rows the host writes after a run.
A feed of one input runs the step graph; up to C inputs the chunk graph, padded; longer committed
feeds run chunk by chunk (block-causal ones cut between attention blocks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from edgegen.archs import arch_module
from edgegen.core.errors import CapabilityError, ConfigError, ContextOverflow, InferenceError
from edgegen.core.manifest import Manifest
from edgegen.core.protocols import Capability, Feed, KVSpec
from edgegen.core.static_feeds import NEG, HostCache, StaticShape, causal
from edgegen.runtimes.onnx.session import choose_provider, create_npu_session, ort_message


class NpuLanguageModel:
    capabilities = (Capability.LOGITS | Capability.ROLLBACK | Capability.MULTI_TOKEN | Capability.SCORE_ONLY
                    | Capability.EMBEDDINGS | Capability.POSITIONS | Capability.BLOCK_ATTENTION)

    def __init__(self, folder: Path, manifest: Manifest, provider: str | None = None, threads: int | None = None):
        from safetensors.numpy import load_file

        self.folder, self.manifest = folder, manifest
        self.config = c = arch_module(manifest.architecture).parse_config(manifest.config)
        self.vocab_size, self.hidden_size = c.vocab_size, c.hidden_size
        try:
            self.capacity, self.chunk = int(manifest.npu["context"]), int(manifest.npu["chunk"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{folder / 'edgegen.json'} is corrupt (its npu entry: {type(exc).__name__} {exc}); "
                              "convert the model again") from None
        self.context_length = self.capacity
        self.provider = choose_provider(provider)  # one absent from this build: the CPU, said in one line
        files = manifest.files
        self.sessions = {size: create_npu_session(folder / files[key], self.provider, threads)
                         for size, key in ((1, "npu_step"), (self.chunk, "npu_chunk"))}
        self.description = f"the NPU bundle on ONNX Runtime ({self.provider})"
        self._table = load_file(str(folder / files["npu_embed"]))["embed_tokens"]
        precision = manifest.npu.get("precision", "fp32")
        self.shape = StaticShape(c.hidden_size, c.num_attention_heads // c.num_key_value_heads, c.inv_freq(),
                                 self.capacity, float(manifest.npu.get("mask_value", NEG[precision])))
        self._outputs = ["logits"] + [f"new_{kv}.{i}" for kv in ("key", "value") for i in range(c.num_hidden_layers)]

    def new_cache(self, kv: KVSpec | None = None) -> HostCache:
        if kv is not None and kv.bits is not None:
            raise CapabilityError("an NPU bundle keeps a float32 KV cache; --kv-bits is not offered on it")
        c = self.config
        return HostCache(c.num_hidden_layers, c.num_key_value_heads, c.head_dim, self.capacity)

    def embed(self, tokens: Sequence[int]) -> np.ndarray:
        return self._table[np.asarray(list(tokens), dtype=np.int64)].astype(np.float32)

    def peak_memory_mb(self) -> float:
        return 0.0

    # ------------------------------------------------------------------ forward
    def forward(self, feed: Feed, cache: HostCache) -> np.ndarray:
        n, past = feed.length, cache.length
        if past + n > self.capacity:
            raise ContextOverflow(f"{past + n} positions do not fit this NPU bundle's cache of {self.capacity}; "
                                  "convert with a larger --context")
        x = self._inputs(feed)
        positions = np.arange(past, past + n) if feed.positions is None else np.asarray(feed.positions)
        allowed = feed.attention_mask(past)
        if allowed is None:
            allowed = causal(past, n)
        start, end = feed.row_range()
        if n <= self.chunk:
            logits = self._run(x, positions, allowed, cache, feed.commit)
            return logits[start:end]
        if not feed.commit:
            if feed.blocks is not None:  # a diffusion block being denoised
                raise CapabilityError(f"an attention block of {n} inputs does not fit this NPU bundle's chunk of "
                                      f"{self.chunk}; decode with --block-size {self.chunk} or less, or convert with a "
                                      "larger --chunk")
            raise CapabilityError(f"this NPU bundle scores at most {self.chunk} inputs at once without keeping them; "
                                  "convert with a larger --chunk")
        rows = []
        for part in self._pieces(feed.blocks, n):  # each piece sees the ones before it through the cache
            at = part.start
            seen = np.concatenate([allowed[part, :past + at], allowed[part, past + at:past + part.stop]], axis=1)
            logits = self._run(x[part], positions[part], seen, cache, True)
            lo, hi = max(start - at, 0), min(end - at, part.stop - at)
            if lo < hi:
                rows.append(logits[lo:hi])
        return np.concatenate(rows) if rows else np.zeros((0, self.vocab_size), np.float32)

    def _pieces(self, blocks: Sequence[int] | None, n: int) -> list[slice]:
        """A committed feed of n > C inputs cut into runs of at most C that no earlier input needs
        to see past: anywhere for causal attention, else between attention blocks (whole blocks
        packed into each run), so the runs one after another compute what one run would."""
        if blocks is None:
            return [slice(at, min(at + self.chunk, n)) for at in range(0, n, self.chunk)]
        starts = [i for i in range(n) if i == 0 or blocks[i] != blocks[i - 1]] + [n]
        pieces, first = [], 0
        for lo, hi in zip(starts, starts[1:]):
            if hi - lo > self.chunk:
                raise CapabilityError(f"an attention block of {hi - lo} inputs does not fit this NPU bundle's chunk "
                                      f"of {self.chunk}; decode with --block-size {self.chunk} or less, or convert "
                                      "with a larger --chunk")
            if hi - first > self.chunk:
                pieces.append(slice(first, lo))
                first = lo
        return pieces + [slice(first, n)]

    def _inputs(self, feed: Feed) -> np.ndarray:
        parts = [self.embed(feed.tokens)] if len(feed.tokens) else []
        if feed.embeddings is not None:
            parts.append(np.asarray(feed.embeddings, np.float32).reshape(-1, self.hidden_size))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _run(self, x: np.ndarray, positions: np.ndarray, allowed: np.ndarray, cache: HostCache,
             commit: bool) -> np.ndarray:
        """One graph run over m ≤ C inputs; `allowed` (m, past + m). Returns (m, vocab) logits."""
        m = len(x)
        size = 1 if m == 1 else self.chunk
        feeds = {**self.shape.inputs(x, positions, allowed, cache.length, size), **cache.feeds()}
        try:
            out = self.sessions[size].run(self._outputs, feeds)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise InferenceError(f"ONNX Runtime failed to run the NPU bundle ({ort_message(exc)}); "
                                 "if its files were changed, convert the model again") from None
        if commit:
            layers = self.config.num_hidden_layers
            cache.write(out[1:1 + layers], out[1 + layers:], m)
        return out[0][0, :m]
