"""Load a converted MLX model and serve it as a `LanguageModel`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from edgegen.archs import arch_module
from edgegen.archs._decoder import DecoderConfig
from edgegen.core.errors import BackendUnavailable, ConfigError
from edgegen.core.manifest import Manifest
from edgegen.core.protocols import Capability, Feed, KVSpec
from edgegen.runtimes.mlx.models import model_module

WEIGHTS = "model.safetensors"
MX_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def import_mlx():
    try:
        import mlx.core as mx
    except ImportError:
        raise BackendUnavailable("MLX is not installed; `pip install mlx` on macOS or `pip install "
                                 "'mlx[cpu]'` on Linux, or convert with --runtime onnx") from None
    return mx


def select_device(device: str | None) -> str:
    """Use Metal where available ('gpu'), else the CPU; an explicit 'gpu' without Metal falls back."""
    mx = import_mlx()
    metal = mx.metal.is_available()
    if device in (None, "auto"):
        device = "gpu" if metal else "cpu"
    if device == "gpu" and not metal:
        print("edgegen: Metal is not available on this machine; MLX runs on the CPU", file=sys.stderr)
        device = "cpu"
    mx.set_default_device(mx.gpu if device == "gpu" else mx.cpu)
    return device


def quantize_predicate(group_size: int):
    import mlx.nn as nn

    def predicate(_path: str, module) -> bool:
        return isinstance(module, (nn.Linear, nn.Embedding)) and module.weight.shape[-1] % group_size == 0

    return predicate


def build_model(config: DecoderConfig, manifest_quant=None):
    """The MLX module for `config`, quantized in structure when `manifest_quant` says so."""
    import mlx.nn as nn

    model = model_module(config.model_type).Model(config)
    if manifest_quant is not None and manifest_quant.bits:
        nn.quantize(model, group_size=manifest_quant.group_size, bits=manifest_quant.bits,
                    class_predicate=quantize_predicate(manifest_quant.group_size))
    return model


def _mlx_lm_model(config: DecoderConfig, folder: Path, quant):
    """The model of an mlx-lm folder: its (possibly sharded) weights, the modules that come with
    scales quantized, as mlx-lm itself loads them."""
    mx = import_mlx()
    import mlx.nn as nn

    weights: dict = {}
    for shard in sorted(folder.glob("*.safetensors")):
        weights.update(mx.load(str(shard)))
    model = model_module(config.model_type).Model(config)
    if quant is not None and quant.bits:
        nn.quantize(model, group_size=quant.group_size, bits=quant.bits,
                    class_predicate=lambda path, module: hasattr(module, "to_quantized") and f"{path}.scales" in weights)
    model.load_weights(list(weights.items()))
    return model


class MLXLanguageModel:
    capabilities = (Capability.LOGITS | Capability.ROLLBACK | Capability.MULTI_TOKEN | Capability.SCORE_ONLY
                    | Capability.EMBEDDINGS | Capability.POSITIONS | Capability.BLOCK_ATTENTION
                    | Capability.QUANTIZED_KV)

    def __init__(self, folder: Path, manifest: Manifest, device: str | None = None):
        mx = import_mlx()
        self.device = select_device(device)
        self.config = arch_module(manifest.architecture).parse_config(manifest.config)
        try:
            if manifest.source.get("layout") == "mlx-lm":
                self.model = _mlx_lm_model(self.config, folder, manifest.quantization)
            else:
                self.model = build_model(self.config, manifest.quantization)
                self.model.load_weights(str(folder / WEIGHTS))
            self.model.eval()
            mx.eval(self.model.parameters())
        except (ValueError, RuntimeError, OSError) as exc:
            raise ConfigError(f"{folder / WEIGHTS} could not be loaded ({' '.join(str(exc).split())[:200]}); "
                              "convert the model again") from None
        self.vocab_size = self.config.vocab_size
        self.hidden_size = self.config.hidden_size
        self.context_length = manifest.context_length
        self.description = f"MLX ({self.device})"

    def new_cache(self, kv: KVSpec | None = None):
        from edgegen.runtimes.mlx.cache import make_cache

        return make_cache(self.config.num_hidden_layers, self.context_length, kv, self.config.head_dim)

    def forward(self, feed: Feed, cache) -> np.ndarray:
        mx = import_mlx()
        from edgegen.runtimes.mlx.models._decoder import Step

        tokens = mx.array(np.asarray(feed.tokens, dtype=np.int32).reshape(1, -1))
        embeds = None if feed.embeddings is None else mx.array(np.asarray(feed.embeddings, np.float32))[None]
        step = Step.of(feed, cache.length)
        logits = self.model(tokens, embeds, cache, step, rows=feed.row_range())
        mx.eval(logits)
        if feed.commit:
            cache.advance(feed.length)
        return np.array(logits[0].astype(mx.float32))  # (rows or L, vocab)

    def embed(self, tokens: Sequence[int]) -> np.ndarray:
        mx = import_mlx()
        rows = self.model.model.embed_tokens(mx.array(list(tokens), dtype=mx.int32))
        return np.array(rows.astype(mx.float32))

    def peak_memory_mb(self) -> float:
        mx = import_mlx()
        return mx.get_peak_memory() / 2**20 if self.device == "gpu" else 0.0
