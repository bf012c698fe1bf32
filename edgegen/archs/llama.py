"""Llama (1/2/3, with Llama-3 RoPE scaling): optional attention and MLP biases."""

from __future__ import annotations

from typing import Any

from edgegen.archs._decoder import DecoderConfig, parse_decoder_config


def parse_config(hf: dict[str, Any]) -> DecoderConfig:
    bias = bool(hf.get("attention_bias", False))
    return parse_decoder_config(hf, attention_bias=bias, o_proj_bias=bias, mlp_bias=bool(hf.get("mlp_bias", False)))
