"""Load a converted ONNX model and serve it as a `LanguageModel` through ONNX Runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from edgegen.core import registry
from edgegen.core.errors import InferenceError
from edgegen.core.manifest import Manifest
from edgegen.core.protocols import Capability
from edgegen.runtimes.onnx.cache import OnnxKVCache
from edgegen.runtimes.onnx.session import choose_provider, create_session, import_ort, ort_message


class OnnxLanguageModel:
    capabilities = Capability.LOGITS | Capability.ROLLBACK | Capability.MULTI_TOKEN

    def __init__(self, folder: Path, manifest: Manifest, provider: str | None = None,
                 threads: int | None = None):
        self.config = registry.arch_module(manifest.architecture).parse_config(manifest.config)
        self.provider = choose_provider(provider)
        self.session = create_session(folder / manifest.files.get("model", "model.onnx"), self.provider, threads)
        self.vocab_size = self.config.vocab_size
        self.context_length = manifest.context_length
        self.description = f"ONNX Runtime ({self.provider})"

    def new_cache(self) -> OnnxKVCache:
        c = self.config
        return OnnxKVCache(c.num_hidden_layers, c.num_key_value_heads, c.head_dim, self.context_length)

    def forward(self, tokens: Sequence[int], cache: OnnxKVCache, *, last_only: bool = False) -> np.ndarray:
        n = len(tokens)
        cache.reserve(n)
        total = cache.length + n
        binding = self._binding(cache)
        binding.bind_cpu_input("input_ids", np.asarray([tokens], dtype=np.int64))
        binding.bind_cpu_input("seqlens_k", np.asarray([total - 1], dtype=np.int32))
        binding.bind_cpu_input("total_sequence_length", np.asarray(total, dtype=np.int32))
        binding.bind_cpu_input("logits_to_keep", np.asarray([1 if last_only else n], dtype=np.int64))
        binding.bind_output("logits")
        try:
            self.session.run_with_iobinding(binding)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise InferenceError(f"ONNX Runtime failed to run the model ({ort_message(exc)}); "
                                 "if the model files were changed, convert the model again") from None
        cache.advance(n)
        # Only the logits are copied out (the presents live in the cache's own buffers).
        return binding.get_outputs()[-1].numpy()[0]  # (kept, vocab); logits is bound last

    def _binding(self, cache: OnnxKVCache):
        """The cache's I/O binding: each layer's buffer bound as both past and present (GQA then
        writes the new keys and values in place). Made again only when the buffers grow."""
        if cache.binding is None or cache.binding[0] != cache.generation:
            ort = import_ort()
            binding = self.session.io_binding()
            for i, (k, v) in enumerate(cache.buffers):
                for kind, buf in (("key", k), ("value", v)):
                    value = ort.OrtValue.ortvalue_from_numpy(buf)  # shares memory with the numpy buffer
                    binding.bind_ortvalue_input(f"past_key_values.{i}.{kind}", value)
                    binding.bind_ortvalue_output(f"present.{i}.{kind}", value)
            cache.binding = (cache.generation, binding)
        return cache.binding[1]

    def peak_memory_mb(self) -> float:
        return 0.0
