"""Qwen2 / Qwen2.5: biases on q, k and v (never on o_proj or the MLP)."""

from __future__ import annotations

from typing import Any

from edgegen.archs._decoder import DecoderConfig, parse_decoder_config


def parse_config(hf: dict[str, Any]) -> DecoderConfig:
    return parse_decoder_config(hf, attention_bias=True)
