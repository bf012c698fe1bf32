"""SDAR (JetLM): Qwen3 layers with block-causal attention; block size and mask id from the config;
no logit shift (position p is predicted by its own row)."""

from __future__ import annotations

from typing import Any

from edgegen.archs._checks import config_int
from edgegen.archs._decoder import DecoderConfig, parse_decoder_config
from edgegen.core.diffusion import DiffusionSpec


def parse_config(hf: dict[str, Any]) -> DecoderConfig:
    bias = bool(hf.get("attention_bias", False))
    spec = DiffusionSpec("block", config_int(hf, "block_size", 4), config_int(hf, "mask_token_id", None, low=0),
                         mask_token="<|MASK|>", rule="dynamic", threshold=0.9)
    return parse_decoder_config(hf, attention_bias=bias, o_proj_bias=bias, qk_norm=True, diffusion=spec)
