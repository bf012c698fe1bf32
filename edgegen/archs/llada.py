"""LLaDA: an OLMo-style Llama (multi-head) with full bidirectional attention; mask id 126336. Its
config and weights use OLMo names, mapped here onto the shared decoder's."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from edgegen.archs._checks import config_int
from edgegen.archs._decoder import DecoderConfig, parse_decoder_config
from edgegen.core.diffusion import DiffusionSpec

_RENAMES = [  # (OLMo pattern, Hugging Face Llama name)
    (r"model\.transformer\.wte\.weight", "model.embed_tokens.weight"),
    (r"model\.transformer\.ln_f\.weight", "model.norm.weight"),
    (r"model\.transformer\.ff_out\.weight", "lm_head.weight"),
    (r"model\.transformer\.blocks\.(\d+)\.attn_norm\.", r"model.layers.\1.input_layernorm."),
    (r"model\.transformer\.blocks\.(\d+)\.ff_norm\.", r"model.layers.\1.post_attention_layernorm."),
    (r"model\.transformer\.blocks\.(\d+)\.([qkv])_proj\.", r"model.layers.\1.self_attn.\2_proj."),
    (r"model\.transformer\.blocks\.(\d+)\.attn_out\.", r"model.layers.\1.self_attn.o_proj."),
    (r"model\.transformer\.blocks\.(\d+)\.ff_proj\.", r"model.layers.\1.mlp.gate_proj."),
    (r"model\.transformer\.blocks\.(\d+)\.up_proj\.", r"model.layers.\1.mlp.up_proj."),
    (r"model\.transformer\.blocks\.(\d+)\.ff_out\.", r"model.layers.\1.mlp.down_proj."),
]


# The shared decoder's field -> LLaDA's (OLMo's) name for it, for the messages of parse_decoder_config.
_NAMES = {"hidden_size": "d_model", "num_attention_heads": "n_heads", "num_key_value_heads": "n_kv_heads",
          "num_hidden_layers": "n_layers", "intermediate_size": "mlp_hidden_size",
          "max_position_embeddings": "max_sequence_length"}


def parse_config(hf: dict[str, Any]) -> DecoderConfig:
    d_model, heads = config_int(hf, "d_model"), config_int(hf, "n_heads")
    vocab_name = "embedding_size" if hf.get("embedding_size") else "vocab_size"
    mapped = {
        "model_type": hf.get("model_type", "llada"), "hidden_size": d_model, "num_attention_heads": heads,
        "num_key_value_heads": hf.get("n_kv_heads") or heads, "num_hidden_layers": hf.get("n_layers"),
        "intermediate_size": hf.get("mlp_hidden_size") or config_int(hf, "mlp_ratio", 4) * d_model,
        "vocab_size": hf.get(vocab_name), "max_position_embeddings": hf.get("max_sequence_length", 4096),
        "rope_theta": hf.get("rope_theta", 10000.0), "rms_norm_eps": hf.get("rms_norm_eps", 1e-5),
        "tie_word_embeddings": bool(hf.get("weight_tying", False)),
    }
    mapped = {k: v for k, v in mapped.items() if v is not None}
    bias = bool(hf.get("include_bias", False))
    spec = DiffusionSpec("full", 32, config_int(hf, "mask_token_id", 126336, low=0), rule="threshold",
                         threshold=0.9, cache="dual")
    return parse_decoder_config(mapped, {**_NAMES, "vocab_size": vocab_name}, attention_bias=bias, o_proj_bias=bias,
                                mlp_bias=bias, diffusion=spec)


def convert_weights(tensors: dict[str, np.ndarray], config: DecoderConfig) -> dict[str, np.ndarray]:
    """OLMo tensor names -> the shared decoder's (Hugging Face Llama) names."""
    out = {}
    for name, array in tensors.items():
        for pattern, target in _RENAMES:
            renamed, hits = re.subn(f"^{pattern}", target, name)
            if hits:
                out[renamed] = array
                break
    return out
