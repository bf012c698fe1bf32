"""Tiny random diffusion-LLM checkpoints, each in its own Hugging Face layout and key names, with a
reference forward under the matching 4-D mask: transformers' Qwen3 (SDAR), Qwen2 (Fast-dLLM v2,
Dream) and Llama (LLaDA, weights renamed to OLMo's) modules, and for BD3-LM a small DiT reference
written here from its architecture (adaLN with random, non-zero modulation so that folding it is
tested). No network."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from checkpoints import COMMON, VOCAB, train_tokenizer

BLOCK = 4
MASK_ID = VOCAB - 1  # a token of the trained vocabulary stands in for the mask

DLLMS = {  # name -> (transformers base, config patch, attention)
    "sdar": ("qwen3", {"model_type": "sdar", "architectures": ["SDARForCausalLM"], "block_size": BLOCK,
                       "mask_token_id": MASK_ID}, "block"),
    "fast_dllm_qwen": ("qwen2", {"model_type": "Fast_dLLM_Qwen", "architectures": ["Fast_dLLM_QwenForCausalLM"],
                                 "bd_size": BLOCK}, "block"),
    "dream": ("qwen2", {"model_type": "Dream", "architectures": ["DreamModel"], "mask_token_id": MASK_ID}, "full"),
    "llada": ("llama", {}, "full"),
    "bd3lm": (None, {}, "block"),
}


def block_mask(n: int, block: int) -> np.ndarray:
    q, k = np.arange(n)[:, None], np.arange(n)[None, :]
    return (q // block) >= (k // block)


def build(name: str, folder: Path, seed: int = 0):
    """Write the checkpoint; returns reference(ids, allowed) -> logits (n, vocab)."""
    if name == "bd3lm":
        return _build_bd3lm(folder, seed)
    import torch
    import transformers

    base, patch, _ = DLLMS[name]
    extra = {"qwen3": dict(head_dim=16, tie_word_embeddings=False), "qwen2": dict(tie_word_embeddings=False),
             "llama": dict(num_key_value_heads=COMMON["num_attention_heads"], tie_word_embeddings=False)}[base]
    vocab = VOCAB + 8 if name == "fast_dllm_qwen" else VOCAB  # room for its |<MASK>| token
    config = transformers.AutoConfig.for_model(base, **{**COMMON, "vocab_size": vocab, **extra})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():  # weights strong enough that a wrong mask changes the output
        for pname, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.1 if "norm" in pname else 0.5 / math.sqrt(p.shape[-1])))
            if "norm" in pname:
                p.add_(1.0)
    tokenizer = train_tokenizer(folder)
    if name == "fast_dllm_qwen":
        tokenizer.add_special_tokens({"additional_special_tokens": ["|<MASK>|"]})
        tokenizer.save_pretrained(folder)
    model.save_pretrained(folder)
    if name == "llada":
        _to_olmo(folder, config)
    else:
        _patch_config(folder, patch)

    def reference(ids: list[int], allowed: np.ndarray) -> np.ndarray:
        bias = torch.zeros(1, 1, len(ids), len(ids)).masked_fill(~torch.from_numpy(allowed), float("-inf"))
        with torch.no_grad():
            return model(torch.tensor([ids]), attention_mask=bias).logits[0].numpy()

    return reference


def _patch_config(folder: Path, patch: dict) -> None:
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **patch}, indent=2))


def _to_olmo(folder: Path, config) -> None:
    """Rename a Llama checkpoint into LLaDA's OLMo layout (config and weight names)."""
    from safetensors.numpy import load_file, save_file

    names = {"model.embed_tokens.weight": "model.transformer.wte.weight", "model.norm.weight": "model.transformer.ln_f.weight",
             "lm_head.weight": "model.transformer.ff_out.weight"}
    parts = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ff_norm", "self_attn.q_proj": "q_proj",
             "self_attn.k_proj": "k_proj", "self_attn.v_proj": "v_proj", "self_attn.o_proj": "attn_out",
             "mlp.gate_proj": "ff_proj", "mlp.up_proj": "up_proj", "mlp.down_proj": "ff_out"}
    weights = load_file(str(folder / "model.safetensors"))
    renamed = {}
    for name, array in weights.items():
        if name in names:
            renamed[names[name]] = array
            continue
        layer, rest = name.removeprefix("model.layers.").split(".", 1)
        part, kind = rest.rsplit(".", 1)
        renamed[f"model.transformer.blocks.{layer}.{parts[part]}.{kind}"] = array
    save_file(renamed, str(folder / "model.safetensors"), metadata={"format": "pt"})
    olmo = {"model_type": "llada", "architectures": ["LLaDAModelLM"], "d_model": config.hidden_size,
            "n_heads": config.num_attention_heads, "n_kv_heads": config.num_key_value_heads,
            "n_layers": config.num_hidden_layers, "mlp_hidden_size": config.intermediate_size,
            "vocab_size": config.vocab_size, "embedding_size": config.vocab_size,
            "max_sequence_length": config.max_position_embeddings, "rope_theta": config.rope_parameters["rope_theta"]
            if getattr(config, "rope_parameters", None) else 10000.0, "rms_norm_eps": config.rms_norm_eps,
            "include_bias": False, "weight_tying": False, "mask_token_id": MASK_ID}
    (folder / "config.json").write_text(json.dumps(olmo, indent=2))


# ------------------------------------------------------------------ BD3-LM, from its description

def _build_bd3lm(folder: Path, seed: int):
    """A DiT-style BD3-LM: fused qkv, LayerNorm without bias, adaLN from a constant condition,
    rotary on q and k, tanh-GELU MLP, adaLN final layer. Random non-zero adaLN everywhere."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    dim, heads, layers, vocab, cond = 64, 4, 2, VOCAB, 32

    def w(*shape, scale=None):
        return (rng.normal(size=shape) * (scale or 0.5 / math.sqrt(shape[-1]))).astype(np.float32)

    t = {"backbone.vocab_embed.embedding": w(vocab, dim, scale=1.0),
         "backbone.sigma_map.mlp.0.weight": w(cond, 256), "backbone.sigma_map.mlp.0.bias": w(cond, scale=0.1),
         "backbone.sigma_map.mlp.2.weight": w(cond, cond), "backbone.sigma_map.mlp.2.bias": w(cond, scale=0.1),
         "backbone.output_layer.norm_final.weight": 1 + w(dim, scale=0.1),
         "backbone.output_layer.linear.weight": w(vocab, dim), "backbone.output_layer.linear.bias": w(vocab, scale=0.1),
         "backbone.output_layer.adaLN_modulation.weight": w(2 * dim, cond, scale=0.1),
         "backbone.output_layer.adaLN_modulation.bias": w(2 * dim, scale=0.1),
         "sampling_eps_min": np.array(1e-3, np.float32)}
    for i in range(layers):
        p = f"backbone.blocks.{i}."
        t.update({p + "norm1.weight": 1 + w(dim, scale=0.1), p + "norm2.weight": 1 + w(dim, scale=0.1),
                  p + "attn_qkv.weight": w(3 * dim, dim), p + "attn_out.weight": w(dim, dim),
                  p + "mlp.0.weight": w(4 * dim, dim), p + "mlp.0.bias": w(4 * dim, scale=0.1),
                  p + "mlp.2.weight": w(dim, 4 * dim), p + "mlp.2.bias": w(dim, scale=0.1),
                  p + "adaLN_modulation.weight": w(6 * dim, cond, scale=0.1),
                  p + "adaLN_modulation.bias": w(6 * dim, scale=0.1)})
    train_tokenizer(folder)
    save_file(t, str(folder / "model.safetensors"))
    config = {"model_type": "bd3lm", "architectures": ["BD3LM"], "block_size": BLOCK, "vocab_size": vocab,
              "model_length": 256, "hidden_dim": dim, "cond_dim": cond, "n_blocks": layers, "n_heads": heads,
              "time_conditioning": False, "adaln": True, "cross_attn": True}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return lambda ids, allowed: _bd3lm_reference(t, ids, allowed, dim, heads, layers)


def _bd3lm_reference(t, ids, allowed, dim, heads, layers):
    import torch
    import torch.nn.functional as F

    T = {k.removeprefix("backbone."): torch.from_numpy(v) for k, v in t.items()}
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    emb = torch.cat([torch.cos(0 * freqs), torch.sin(0 * freqs)])
    c = F.silu(F.linear(F.silu(F.linear(emb, T["sigma_map.mlp.0.weight"], T["sigma_map.mlp.0.bias"])),
                        T["sigma_map.mlp.2.weight"], T["sigma_map.mlp.2.bias"]))
    x = T["vocab_embed.embedding"][torch.tensor(ids)][None]  # (1, n, dim)
    n, hd = len(ids), dim // heads
    inv = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
    ang = torch.outer(torch.arange(n).float(), inv)
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)

    def rot(u):  # (1, n, h, hd)
        u1, u2 = u[..., : hd // 2], u[..., hd // 2:]
        return u * cos[None, :, None] + torch.cat([-u2, u1], -1) * sin[None, :, None]

    bias = torch.zeros(n, n).masked_fill(~torch.from_numpy(allowed), float("-inf"))
    for i in range(layers):
        p = f"blocks.{i}."
        sa, sca, ga, sm, scm, gm = F.linear(c, T[p + "adaLN_modulation.weight"], T[p + "adaLN_modulation.bias"]).chunk(6)
        h = F.layer_norm(x, [dim]) * T[p + "norm1.weight"] * (1 + sca) + sa
        q, k, v = F.linear(h, T[p + "attn_qkv.weight"]).view(1, n, 3, heads, hd).unbind(2)
        q, k = rot(q), rot(k)
        att = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=bias)
        x = x + ga * F.linear(att.transpose(1, 2).reshape(1, n, dim), T[p + "attn_out.weight"])
        h = F.layer_norm(x, [dim]) * T[p + "norm2.weight"] * (1 + scm) + sm
        h = F.linear(F.gelu(F.linear(h, T[p + "mlp.0.weight"], T[p + "mlp.0.bias"]), approximate="tanh"),
                     T[p + "mlp.2.weight"], T[p + "mlp.2.bias"])
        x = x + gm * h
    shift, scale = F.linear(c, T["output_layer.adaLN_modulation.weight"], T["output_layer.adaLN_modulation.bias"]).chunk(2)
    x = F.layer_norm(x, [dim]) * T["output_layer.norm_final.weight"] * (1 + scale) + shift
    return F.linear(x, T["output_layer.linear.weight"], T["output_layer.linear.bias"])[0].detach().numpy()
