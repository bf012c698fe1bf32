"""BD3-LM (block diffusion, Kuleshov group): a DiT-style transformer with block-causal attention.

Each block is pre-LayerNorm attention (fused q/k/v, no biases, RoPE on q and k) and a tanh-GELU MLP,
both modulated by adaLN from a conditioning vector c = silu(sigma_map(sigma)). The released models
have `time_conditioning: false`, so sigma = 0 and c is a constant: every shift, scale and gate is a
constant too, and the converter folds them into plain weights (LayerNorm weight·(1 + scale) and bias
shift, gates into the output projections). What remains is the shared decoder with LayerNorm, GELU
and biased heads. The vocabulary is GPT-2's plus an appended [MASK] (its last id).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgegen.archs._checks import MAX_CONTEXT, MAX_LAYERS, MAX_SIZE, config_int
from edgegen.archs._decoder import DecoderConfig, parse_decoder_config
from edgegen.core.diffusion import DiffusionSpec
from edgegen.core.errors import ConfigError

FREQUENCY_EMBEDDING = 256  # TimestepEmbedder's sinusoidal size
MLP_RATIO = 4


def parse_config(hf: dict[str, Any]) -> DecoderConfig:
    if hf.get("time_conditioning"):
        raise ConfigError("this BD3-LM is time-conditioned; only time_conditioning: false models (the released "
                          "ones) are supported")
    dim = config_int(hf, "hidden_dim", high=MAX_SIZE // MLP_RATIO)
    vocab = config_int(hf, "vocab_size")
    mapped = {"model_type": "bd3lm", "hidden_size": dim, "num_attention_heads": config_int(hf, "n_heads"),
              "num_hidden_layers": config_int(hf, "n_blocks", high=MAX_LAYERS), "intermediate_size": MLP_RATIO * dim,
              "vocab_size": vocab, "max_position_embeddings": config_int(hf, "model_length", 1024, high=MAX_CONTEXT),
              "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}
    spec = DiffusionSpec("block", config_int(hf, "block_size", 4), vocab - 1, rule="first_hitting")
    names = {"hidden_size": "hidden_dim", "num_attention_heads": "n_heads", "num_key_value_heads": "n_heads",
             "num_hidden_layers": "n_blocks", "max_position_embeddings": "model_length"}
    return parse_decoder_config(mapped, names, norm="layer", mlp="gelu", mlp_bias=True, lm_head_bias=True,
                                diffusion=spec)


def convert_weights(tensors: dict[str, np.ndarray], config: DecoderConfig) -> dict[str, np.ndarray]:
    """BD3-LM tensors (with or without the `backbone.` prefix) -> the shared decoder's names."""
    t = {name.removeprefix("backbone."): array for name, array in tensors.items()}
    try:
        c = _conditioning(t)
        out = {"model.embed_tokens.weight": t["vocab_embed.embedding"]}
        for i in range(config.num_hidden_layers):
            out.update(_block(t, f"blocks.{i}.", f"model.layers.{i}.", c, config.hidden_size))
        shift, scale = _modulation(t, "output_layer.adaLN_modulation", c, 2)
        out["model.norm.weight"] = t["output_layer.norm_final.weight"] * (1 + scale)
        out["model.norm.bias"] = shift
        out["lm_head.weight"] = t["output_layer.linear.weight"]
        out["lm_head.bias"] = t["output_layer.linear.bias"]
    except KeyError as exc:
        raise ConfigError(f"the checkpoint lacks the BD3-LM tensor {exc.args[0]!r}; is it complete?") from None
    return out


def _block(t: dict[str, np.ndarray], src: str, dst: str, c: np.ndarray, dim: int) -> dict[str, np.ndarray]:
    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = _modulation(t, src + "adaLN_modulation", c, 6)
    q, k, v = np.split(t[src + "attn_qkv.weight"], 3, axis=0)  # rows: (three, heads, head_dim)
    return {
        dst + "input_layernorm.weight": t[src + "norm1.weight"] * (1 + scale_a),
        dst + "input_layernorm.bias": shift_a,
        dst + "self_attn.q_proj.weight": q, dst + "self_attn.k_proj.weight": k, dst + "self_attn.v_proj.weight": v,
        dst + "self_attn.o_proj.weight": t[src + "attn_out.weight"] * gate_a[:, None],
        dst + "post_attention_layernorm.weight": t[src + "norm2.weight"] * (1 + scale_m),
        dst + "post_attention_layernorm.bias": shift_m,
        dst + "mlp.up_proj.weight": t[src + "mlp.0.weight"], dst + "mlp.up_proj.bias": t[src + "mlp.0.bias"],
        dst + "mlp.down_proj.weight": t[src + "mlp.2.weight"] * gate_m[:, None],
        dst + "mlp.down_proj.bias": t[src + "mlp.2.bias"] * gate_m,
    }


def _conditioning(t: dict[str, np.ndarray]) -> np.ndarray:
    """c = silu(sigma_map(0)): the TimestepEmbedder MLP on the sinusoidal embedding of t = 0."""
    half = FREQUENCY_EMBEDDING // 2
    freqs = np.exp(-math.log(10000) * np.arange(half, dtype=np.float64) / half)
    args = 0.0 * freqs
    x = np.concatenate([np.cos(args), np.sin(args)])
    h = t["sigma_map.mlp.0.weight"].astype(np.float64) @ x + t["sigma_map.mlp.0.bias"]
    h = h / (1 + np.exp(-h))  # SiLU
    h = t["sigma_map.mlp.2.weight"].astype(np.float64) @ h + t["sigma_map.mlp.2.bias"]
    return h / (1 + np.exp(-h))  # the model applies SiLU once more


def _modulation(t: dict[str, np.ndarray], name: str, c: np.ndarray, parts: int) -> list[np.ndarray]:
    out = t[name + ".weight"].astype(np.float64) @ c + t[name + ".bias"]
    return [part.astype(np.float32) for part in np.split(out, parts)]
