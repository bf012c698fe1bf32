"""Load a converted ONNX model and serve it as a `LanguageModel` through ONNX Runtime.

One graph per KV-cache precision shares the weights file; a cache is made for one of them, and the
backend keeps one session loaded at a time (switching precision loads the other graph).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from edgegen.archs import arch_module
from edgegen.core.errors import CapabilityError, ConfigError, InferenceError
from edgegen.core.manifest import Manifest
from edgegen.core.protocols import Capability, Feed, KVSpec
from edgegen.runtimes.onnx.cache import OnnxKVCache, variant_of
from edgegen.runtimes.onnx.feeds import StepFeeds
from edgegen.runtimes.onnx.session import choose_provider, create_session, import_ort, ort_message

QMAX = {"kv8": 127.0, "kv4": 7.0}  # symmetric int8 / int4 as GroupQueryAttention stores them
# Scale = margin × calibrated absmax / qmax: int8 keeps headroom; int4 clips the top 10% of each range
# for finer steps (0.9 kept the perplexity of three held-out pages within ±1.2% of the float cache).
SCALE_MARGIN = {"kv8": 1.25, "kv4": 0.9}


class OnnxLanguageModel:
    capabilities = (Capability.LOGITS | Capability.ROLLBACK | Capability.MULTI_TOKEN | Capability.SCORE_ONLY
                    | Capability.EMBEDDINGS | Capability.QUANTIZED_KV)

    def __init__(self, folder: Path, manifest: Manifest, provider: str | None = None,
                 threads: int | None = None, spinning: bool = True):
        self.folder, self.manifest, self.threads, self.spinning = folder, manifest, threads, spinning
        self.config = arch_module(manifest.architecture).parse_config(manifest.config)
        self.provider = choose_provider(provider)
        self.vocab_size = self.config.vocab_size
        self.hidden_size = self.config.hidden_size
        self.context_length = manifest.context_length
        self.description = f"ONNX Runtime ({self.provider})"
        self.block_graph = manifest.family == "dllm"  # causal=0 GQA with attention_bias and position_ids
        # a causal graph may run one-token steps with each KV head's query heads as rows, writing
        # the new key and value once per row (converters/onnx/grouped_decode.py, only where that
        # pays): room for those rows is kept either way, a few rows graphs without it never touch
        group = self.config.num_attention_heads // self.config.num_key_value_heads
        self._spare_rows = 0 if self.block_graph else group - 1
        if self.block_graph:
            self.capabilities = type(self).capabilities | Capability.POSITIONS | Capability.BLOCK_ATTENTION
        self._loaded: tuple[str, object] | None = None
        self._session("float")  # a damaged model fails here, at load time
        self._table = None
        self._no_embeds = np.zeros((1, 0, self.hidden_size), np.float32)

    # ------------------------------------------------------------------ caches and sessions
    def new_cache(self, kv: KVSpec | None = None) -> OnnxKVCache:
        variant = variant_of(kv)
        c = self.config
        return OnnxKVCache(c.num_hidden_layers, c.num_key_value_heads, c.head_dim, self.context_length,
                           variant, self._session(variant), self._scales(variant))

    def _session(self, variant: str):
        """The session of graph `variant`; loading one releases the previous (caches made for it
        keep theirs alive until they go)."""
        if self._loaded is None or self._loaded[0] != variant:
            key = "model" if variant == "float" else variant
            name = self.manifest.files.get(key)
            if name is None:
                raise ConfigError(f"{self.folder} has no {variant} KV-cache graph; convert the model again "
                                  "with this edgegen version")
            self._loaded = None
            self._loaded = (variant, create_session(self.folder / name, self.provider, self.threads, self.spinning))
        return self._loaded[1]

    def _scales(self, variant: str) -> dict[str, np.ndarray]:
        """Per-layer static K/V scales (1, Hkv, 1, Dh) for a quantized variant, from the calibration."""
        if variant not in QMAX:
            return {}
        name = self.manifest.files.get("kv_scales")
        if name is None:
            raise ConfigError(f"{self.folder} has no KV calibration; convert the model again")
        from safetensors.numpy import load_file

        absmax = load_file(str(self.folder / name))
        step = SCALE_MARGIN[variant] / QMAX[variant]
        return {f"kv_scale.{key.split('.', 1)[1]}": np.maximum(a * step, 1e-6).astype(np.float32)[None, :, None, :]
                for key, a in absmax.items()}

    # ------------------------------------------------------------------ forward
    def forward(self, feed: Feed, cache: OnnxKVCache) -> np.ndarray:
        n = feed.length
        cache.reserve(n, spare=self._spare_rows if n == 1 else 0)
        total = cache.length + n
        binding, feeds = self._binding(cache)
        embeds = None if feed.embeddings is None else np.asarray(feed.embeddings, np.float32)[None]
        if self.block_graph:
            binding.bind_cpu_input("input_ids", np.asarray([feed.tokens], dtype=np.int64).reshape(1, -1))
            binding.bind_cpu_input("inputs_embeds", self._no_embeds if embeds is None else embeds)
            binding.bind_cpu_input("seqlens_k", np.asarray([total - 1], dtype=np.int32))
            binding.bind_cpu_input("total_sequence_length", np.asarray(total, dtype=np.int32))
            self._bind_block_inputs(binding, feed, cache.length)
            binding.bind_output("logits")
            logits = None
        else:  # the causal graph's inputs are arrays bound once, written in place (feeds.py)
            logits = feeds.set(feed.tokens, total, self._last_rows(feed), embeds)
        try:
            cache.session.run_with_iobinding(binding)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise InferenceError(f"ONNX Runtime failed to run the model ({ort_message(exc)}); "
                                 "if the model files were changed, convert the model again") from None
        if feed.commit:
            cache.advance(n)
        # Only the logits are copied out (the presents live in the cache's own buffers).
        if logits is None:
            return binding.get_outputs()[-1].numpy()[0]  # (kept, vocab); logits is bound last
        return logits[0].copy()  # the array is written again by the next forward

    def _last_rows(self, feed: Feed) -> int:
        """The causal graph keeps the last n positions and knows no other pattern."""
        start, end = feed.row_range()
        if feed.positions is not None or feed.blocks is not None or feed.hidden is not None or end != feed.length:
            raise CapabilityError("this ONNX graph attends causally and returns the last positions only; "
                                  "positions, attention blocks and row ranges need a diffusion LLM's graph")
        return end - start

    @staticmethod
    def _bind_block_inputs(binding, feed: Feed, past: int) -> None:
        n = feed.length
        positions = np.arange(past, past + n) if feed.positions is None else np.asarray(feed.positions)
        if past == 0 and np.any(positions != positions[0] + np.arange(n)):
            raise CapabilityError("GroupQueryAttention reads only the first position of a feed into an empty cache; "
                                  "explicit positions there must be consecutive")
        allowed = feed.attention_mask(past)
        if allowed is None:  # plain causal attention, as data
            allowed = np.arange(past + n)[None, :] <= (past + np.arange(n))[:, None]
        binding.bind_cpu_input("position_ids", positions.astype(np.int64)[None])
        binding.bind_cpu_input("attention_bias", np.where(allowed, 0.0, -np.inf).astype(np.float32)[None, None])
        binding.bind_cpu_input("logits_range", np.asarray(feed.row_range(), dtype=np.int64))

    def _binding(self, cache: OnnxKVCache):
        """The cache's I/O binding, and its step feeds: each layer's buffer bound as both past and
        present (GQA then writes the new keys and values in place). Made again only when the
        buffers grow."""
        if cache.binding is None or cache.binding[0] != cache.generation:
            ort = import_ort()
            binding = cache.session.io_binding()
            for i, (k, v) in enumerate(cache.buffers):
                for kind, buf in (("key", k), ("value", v)):
                    value = ort.OrtValue.ortvalue_from_numpy(buf)  # shares memory with the numpy buffer
                    binding.bind_ortvalue_input(f"past_key_values.{i}.{kind}", value)
                    binding.bind_ortvalue_output(f"present.{i}.{kind}", value)
            for name, scale in cache.scales.items():
                binding.bind_cpu_input(name, scale)
            feeds = None if self.block_graph else StepFeeds(binding, ort, self.hidden_size, self.vocab_size)
            cache.binding = (cache.generation, binding, feeds)
        return cache.binding[1], cache.binding[2]

    # ------------------------------------------------------------------ embeddings
    def embed(self, tokens: Sequence[int]) -> np.ndarray:
        if self._table is None:
            from edgegen.runtimes.onnx.embedding import EmbeddingTable

            self._table = EmbeddingTable(self.folder, self.manifest.files.get("model", "model.onnx"))
        return self._table.rows(tokens)

    def peak_memory_mb(self) -> float:
        return 0.0
