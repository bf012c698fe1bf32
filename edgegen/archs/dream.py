"""Dream: Qwen2 layers with full bidirectional attention and shifted logits; mask id from the
config (151666). Decoded in semi-autoregressive blocks with an approximate (dual) cache."""

from __future__ import annotations

from typing import Any

from edgegen.archs._checks import config_int
from edgegen.archs._decoder import DecoderConfig, parse_decoder_config
from edgegen.core.diffusion import DiffusionSpec


def parse_config(hf: dict[str, Any]) -> DecoderConfig:
    spec = DiffusionSpec("full", 32, config_int(hf, "mask_token_id", None, low=0), mask_token="<|mask|>", shift=True,
                         rule="threshold", threshold=0.9, cache="dual")
    return parse_decoder_config(hf, attention_bias=True, diffusion=spec)
