"""Fast-dLLM v2 (`Fast_dLLM_Qwen`): Qwen2 layers with block-causal attention over blocks of `bd_size`
(32), committed in sub-blocks of 8; logits shifted (row p - 1 predicts p) and each block's first
token decoded autoregressively. Its mask `|<MASK>|` (151665) is not in the config: it is looked up
in the tokenizer at convert time."""

from __future__ import annotations

from typing import Any

from edgegen.archs._checks import config_int
from edgegen.archs._decoder import DecoderConfig, parse_decoder_config
from edgegen.core.diffusion import DiffusionSpec


def parse_config(hf: dict[str, Any]) -> DecoderConfig:
    spec = DiffusionSpec("block", config_int(hf, "bd_size", 32), config_int(hf, "mask_token_id", None, low=0),
                         mask_token="|<MASK>|", shift=True, ar_first_token=True,
                         sub_block=config_int(hf, "small_block_size", 8), rule="threshold", threshold=0.9)
    return parse_decoder_config(hf, {"block_size": "bd_size"}, attention_bias=True, diffusion=spec)
