"""Mistral: Llama without biases. A sliding window, where configured, caps the context: within the
window full causal attention is exact."""

from __future__ import annotations

import dataclasses
from typing import Any

from edgegen.archs._checks import MAX_CONTEXT, config_int
from edgegen.archs._decoder import DecoderConfig, parse_decoder_config


def parse_config(hf: dict[str, Any]) -> DecoderConfig:
    config = parse_decoder_config(hf)
    window = config_int(hf, "sliding_window", high=MAX_CONTEXT) if hf.get("sliding_window") else None  # null, 0: none
    if window and window < config.max_position_embeddings:
        config = dataclasses.replace(config, max_position_embeddings=window)
    return config
