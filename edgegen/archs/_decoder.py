"""The decoder-only transformer shared by Llama, Mistral, Qwen2/3 and the diffusion LLMs built on
them (SDAR, Fast-dLLM v2, Dream, LLaDA, BD3-LM): config, RoPE, weight names.

Backend-free (numpy only). Each `archs/<model_type>.py` turns a Hugging Face `config.json` into a
`DecoderConfig` with its own feature flags; runtimes build their graphs from this alone.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from edgegen.archs._checks import HINT, MAX_CONTEXT, MAX_LAYERS, REQUIRED, bad_value, config_float, config_int, lacks
from edgegen.core.diffusion import DiffusionSpec
from edgegen.core.errors import ConfigError

ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    rope_theta: float
    rope_scaling: dict[str, Any] | None = None
    attention_bias: bool = False  # bias on q/k/v (Qwen2 always; Llama when configured)
    o_proj_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # RMSNorm on each head of q and k before RoPE (Qwen3)
    norm: str = "rms"  # "rms" (RMSNorm) | "layer" (LayerNorm with weight and bias, BD3-LM)
    mlp: str = "swiglu"  # "swiglu" (gate/up/down) | "gelu" (up, tanh GELU, down, with biases: BD3-LM)
    lm_head_bias: bool = False
    diffusion: DiffusionSpec | None = None  # set for diffusion LLMs (manifest family "dllm")

    @property
    def family(self) -> str:
        return "ar" if self.diffusion is None else "dllm"

    @property
    def context_length(self) -> int:
        return self.max_position_embeddings

    def inv_freq(self) -> np.ndarray:
        """RoPE inverse frequencies (head_dim // 2,), float64, with any configured scaling."""
        return rope_inv_freq(self.head_dim, self.rope_theta, self.rope_scaling)

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every Hugging Face tensor name this config needs, with its shape."""
        h, d = self.hidden_size, self.head_dim
        q, kv = self.num_attention_heads * d, self.num_key_value_heads * d
        shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (self.vocab_size, h)}
        for i in range(self.num_hidden_layers):
            shapes.update(_layer_shapes(self, f"model.layers.{i}.", h, q, kv))
        shapes["model.norm.weight"] = (h,)
        if self.norm == "layer":
            shapes["model.norm.bias"] = (h,)
        if not self.tie_word_embeddings:
            shapes["lm_head.weight"] = (self.vocab_size, h)
        if self.lm_head_bias:
            shapes["lm_head.bias"] = (self.vocab_size,)
        return shapes


def _layer_shapes(c: DecoderConfig, p: str, h: int, q: int, kv: int) -> dict[str, tuple[int, ...]]:
    f = c.intermediate_size
    s = {
        p + "input_layernorm.weight": (h,),
        p + "post_attention_layernorm.weight": (h,),
        p + "self_attn.q_proj.weight": (q, h),
        p + "self_attn.k_proj.weight": (kv, h),
        p + "self_attn.v_proj.weight": (kv, h),
        p + "self_attn.o_proj.weight": (h, q),
        p + "mlp.up_proj.weight": (f, h),
        p + "mlp.down_proj.weight": (h, f),
    }
    if c.mlp == "swiglu":
        s[p + "mlp.gate_proj.weight"] = (f, h)
    if c.norm == "layer":
        s.update({p + "input_layernorm.bias": (h,), p + "post_attention_layernorm.bias": (h,)})
    if c.attention_bias:
        s.update({p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                  p + "self_attn.v_proj.bias": (kv,)})
    if c.o_proj_bias:
        s[p + "self_attn.o_proj.bias"] = (h,)
    if c.mlp_bias:
        s.update({p + "mlp.up_proj.bias": (f,), p + "mlp.down_proj.bias": (h,)})
        if c.mlp == "swiglu":
            s[p + "mlp.gate_proj.bias"] = (f,)
    if c.qk_norm:
        s.update({p + "self_attn.q_norm.weight": (c.head_dim,), p + "self_attn.k_norm.weight": (c.head_dim,)})
    return s


def rope_inv_freq(head_dim: int, theta: float, scaling: dict[str, Any] | None) -> np.ndarray:
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    kind = (scaling or {}).get("rope_type", "default")
    if kind == "default":
        return inv
    if kind == "linear":
        return inv / float(scaling["factor"])
    return _llama3_scaled(inv, scaling)  # validated in parse_decoder_config


def _llama3_scaled(inv: np.ndarray, s: dict[str, Any]) -> np.ndarray:
    factor, low, high = float(s["factor"]), float(s["low_freq_factor"]), float(s["high_freq_factor"])
    old_ctx = float(s["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    smooth = (old_ctx / wavelen - low) / (high - low)
    mid = (1 - smooth) * inv / factor + smooth * inv
    out = np.where(wavelen > low_wavelen, inv / factor, inv)
    is_mid = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(is_mid, mid, out)


def parse_decoder_config(hf: dict[str, Any], names: dict[str, str] | None = None, **features: Any) -> DecoderConfig:
    """Read the fields every decoder shares from a Hugging Face config dict (v4 or v5 layout), each
    number checked (archs/_checks.py) before anything is sized from it. `names`: the checkpoint's
    own name of a field, for the messages, where it differs (LLaDA's d_model, BD3-LM's n_blocks)."""
    names = names or {}

    def size(key: str, default: Any = REQUIRED, **bounds: int) -> int:
        return config_int(hf, key, default, name=names.get(key, key), **bounds)

    if not hf.get("model_type"):
        raise lacks("model_type")
    heads, hidden = size("num_attention_heads"), size("hidden_size")
    kv_heads = size("num_key_value_heads", heads)
    if heads % kv_heads:
        raise ConfigError(f"config.json: {names.get('num_attention_heads', 'num_attention_heads')} ({heads}) must "
                          f"be a multiple of {names.get('num_key_value_heads', 'num_key_value_heads')} ({kv_heads}); "
                          f"{HINT}")
    head_dim = size("head_dim", hidden // heads)  # Qwen3, Gemma, Mistral: not always hidden_size / heads
    if head_dim % 2 or not head_dim:
        field = "head_dim" if hf.get("head_dim") is not None else (
            f"head_dim ({names.get('hidden_size', 'hidden_size')} // {names.get('num_attention_heads', 'heads')})")
        raise bad_value(field, "a positive even number (RoPE turns pairs of dimensions)", head_dim)
    vocab, context = size("vocab_size"), size("max_position_embeddings", 2048, high=MAX_CONTEXT)
    _check_diffusion(features.get("diffusion"), vocab, context, names)
    theta, scaling = _rope_fields(hf)
    return DecoderConfig(
        model_type=hf["model_type"], vocab_size=vocab, hidden_size=hidden,
        intermediate_size=size("intermediate_size"), num_hidden_layers=size("num_hidden_layers", high=MAX_LAYERS),
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
        rms_norm_eps=config_float(hf, "rms_norm_eps", 1e-6), max_position_embeddings=context,
        tie_word_embeddings=_flag(hf, "tie_word_embeddings"), rope_theta=theta, rope_scaling=scaling,
        **features,
    )


def _flag(hf: dict[str, Any], key: str) -> bool:
    """A true/false field (bool("false") would be True)."""
    value = hf.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_value(key, "true or false", value)
    return value


def _check_diffusion(spec: DiffusionSpec | None, vocab: int, context: int, names: dict[str, str]) -> None:
    """What a diffusion LLM's own fields must agree with (each was read with config_int)."""
    if spec is None:
        return
    if spec.mask_token_id is not None and spec.mask_token_id >= vocab:
        raise ConfigError(f"config.json: mask_token_id ({spec.mask_token_id}) must be below "
                          f"{names.get('vocab_size', 'vocab_size')} ({vocab}); {HINT}")
    if spec.attention == "block" and spec.block_size > context:  # trained block-causal (full: a default only)
        raise ConfigError(f"config.json: {names.get('block_size', 'block_size')} ({spec.block_size}) must not exceed "
                          f"{names.get('max_position_embeddings', 'max_position_embeddings')} ({context}); {HINT}")


def _rope_fields(hf: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    raw = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if not isinstance(raw, dict):
        raise bad_value("rope_parameters" if "rope_parameters" in hf else "rope_scaling", "a JSON object", raw)
    params = dict(raw)
    theta = config_float(params if params.get("rope_theta") is not None else hf, "rope_theta", 10000.0)
    params.pop("rope_theta", None)
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise ConfigError(f"RoPE scaling {kind!r} is not supported yet; supported: {', '.join(ROPE_TYPES)}")
    if kind == "default":
        return theta, None
    needed = ("factor",) if kind == "linear" else (
        "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    missing = [k for k in needed if k not in params]
    if missing:
        raise ConfigError(f"RoPE scaling {kind!r} lacks {', '.join(missing)} in config.json")
    for key in needed:  # the scaling's own numbers: positive, and llama3's band not empty
        config_float(params, key, name=f"RoPE scaling {key}")
    if kind == "llama3" and params["high_freq_factor"] <= params["low_freq_factor"]:
        raise bad_value("RoPE scaling high_freq_factor", f"above low_freq_factor ({params['low_freq_factor']})",
                        params["high_freq_factor"])
    return theta, {**params, "rope_type": kind}
