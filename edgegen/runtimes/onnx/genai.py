"""An onnxruntime-genai folder (its model builder's output: `genai_config.json` + the decoder graph)
served as a `LanguageModel`, as genai's own loop feeds it: `input_ids`, an all-ones
`attention_mask` as long as the text so far, and per layer one KV buffer bound as both
`past_key_values.i` and `present.i` (GroupQueryAttention writes the new rows in place: genai's
`past_present_share_buffer`). Rollback is a length, as in edgegen's own graphs; the graph takes
no embeddings, positions or attention patterns, so strategies that need them refuse in one line.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from edgegen.core.errors import CapabilityError, ConfigError, InferenceError
from edgegen.core.protocols import Capability, Feed, KVSpec
from edgegen.runtimes.onnx.cache import OnnxKVCache
from edgegen.runtimes.onnx.session import choose_provider, create_session, import_ort, ort_message


@dataclasses.dataclass(frozen=True)
class GenaiShape:
    num_hidden_layers: int
    num_key_value_heads: int
    head_dim: int
    hidden_size: int


class GenaiLanguageModel:
    capabilities = Capability.LOGITS | Capability.ROLLBACK | Capability.MULTI_TOKEN | Capability.SCORE_ONLY

    def __init__(self, folder: Path, genai: dict, provider: str | None = None, threads: int | None = None):
        try:
            model = genai["model"]
            decoder = model["decoder"]
            self.config = GenaiShape(int(decoder["num_hidden_layers"]), int(decoder["num_key_value_heads"]),
                                     int(decoder["head_size"]), int(decoder["hidden_size"]))
            self.vocab_size = int(model["vocab_size"])
            self.context_length = int(model.get("context_length") or genai["search"]["max_length"])
            self._names = (decoder["inputs"], decoder["outputs"])
            filename = decoder["filename"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{folder / 'genai_config.json'} lacks {exc}; is it onnxruntime-genai's?") from None
        if "logits" not in decoder["outputs"]:  # e.g. the builder's exclude_lm_head: hidden states out
            raise ConfigError(f"{folder}'s genai decoder has no logits output (built without its LM head?); edgegen "
                              "decodes from logits: build it with the LM head, or convert the original checkpoint")
        if "position_ids" in decoder["inputs"] or "inputs_embeds" in decoder["inputs"]:
            raise ConfigError(f"{folder} is a genai decoder with position_ids or inputs_embeds inputs, which edgegen "
                              "does not feed yet; use onnxruntime-genai, or convert the original checkpoint")
        self.hidden_size = self.config.hidden_size
        self.provider = choose_provider(provider)
        self.session = create_session(folder / filename, self.provider, threads)
        self.description = f"an onnxruntime-genai graph on ONNX Runtime ({self.provider})"

    def new_cache(self, kv: KVSpec | None = None) -> OnnxKVCache:
        if kv is not None and kv.bits is not None:
            raise CapabilityError("an onnxruntime-genai graph keeps a float KV cache; --kv-bits needs a model "
                                  "converted by edgegen")
        c = self.config
        return OnnxKVCache(c.num_hidden_layers, c.num_key_value_heads, c.head_dim, self.context_length,
                           "float", self.session)

    def forward(self, feed: Feed, cache: OnnxKVCache) -> np.ndarray:
        if feed.embeddings is not None or feed.positions is not None or feed.blocks is not None or feed.hidden:
            raise CapabilityError("an onnxruntime-genai graph takes token ids only")
        n = feed.length
        cache.reserve(n)
        binding = self._binding(cache)
        inputs, _ = self._names
        binding.bind_cpu_input(inputs["input_ids"], np.asarray([feed.tokens], dtype=np.int64))
        binding.bind_cpu_input(inputs["attention_mask"], np.ones((1, cache.length + n), dtype=np.int64))
        binding.bind_output(self._names[1]["logits"])
        try:
            cache.session.run_with_iobinding(binding)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise InferenceError(f"ONNX Runtime failed to run the genai graph ({ort_message(exc)})") from None
        if feed.commit:
            cache.advance(n)
        logits = binding.get_outputs()[-1].numpy()[0]  # (n, vocab): logits is bound last
        start, end = feed.row_range()
        return logits[start:end].astype(np.float32, copy=False)

    def _binding(self, cache: OnnxKVCache):
        """Each layer's buffer bound as its past and its present (made again when the buffers grow)."""
        if cache.binding is None or cache.binding[0] != cache.generation:
            ort = import_ort()
            inputs, outputs = self._names
            binding = cache.session.io_binding()
            for i, (k, v) in enumerate(cache.buffers):
                for past, present, buf in ((inputs["past_key_names"], outputs["present_key_names"], k),
                                           (inputs["past_value_names"], outputs["present_value_names"], v)):
                    value = ort.OrtValue.ortvalue_from_numpy(buf)
                    binding.bind_ortvalue_input(past % i, value)
                    binding.bind_ortvalue_output(present % i, value)
            cache.binding = (cache.generation, binding, None)
        return cache.binding[1]

    def peak_memory_mb(self) -> float:
        return 0.0
