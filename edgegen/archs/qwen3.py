"""Qwen3: RMSNorm over each head of q and k before RoPE; q/k/v/o biases only when configured."""

from __future__ import annotations

from typing import Any

from edgegen.archs._decoder import DecoderConfig, parse_decoder_config


def parse_config(hf: dict[str, Any]) -> DecoderConfig:
    bias = bool(hf.get("attention_bias", False))
    return parse_decoder_config(hf, attention_bias=bias, o_proj_bias=bias, qk_norm=True)
