"""The decoder-only transformer in MLX, parameterised by `DecoderConfig` feature flags.

Module names mirror Hugging Face's, so checkpoint tensors load by name with no mapping.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from edgegen.archs._decoder import DecoderConfig


class Attention(nn.Module):
    def __init__(self, c: DecoderConfig, index: int):
        super().__init__()
        h, d = c.hidden_size, c.head_dim
        self.index, self.n_heads, self.n_kv, self.head_dim = index, c.num_attention_heads, c.num_key_value_heads, d
        self.scale = d ** -0.5
        self.q_proj = nn.Linear(h, self.n_heads * d, bias=c.attention_bias)
        self.k_proj = nn.Linear(h, self.n_kv * d, bias=c.attention_bias)
        self.v_proj = nn.Linear(h, self.n_kv * d, bias=c.attention_bias)
        self.o_proj = nn.Linear(self.n_heads * d, h, bias=c.o_proj_bias)
        if c.qk_norm:
            self.q_norm = nn.RMSNorm(d, eps=c.rms_norm_eps)
            self.k_norm = nn.RMSNorm(d, eps=c.rms_norm_eps)
        self._periods = mx.array(1.0 / c.inv_freq(), dtype=mx.float32)  # not a parameter ("_")

    def __call__(self, x: mx.array, cache, step: "Step") -> mx.array:
        B, L, _ = x.shape  # (B, L, hidden)
        q = self.q_proj(x).reshape(B, L, self.n_heads, self.head_dim)
        k = self.k_proj(x).reshape(B, L, self.n_kv, self.head_dim)
        v = self.v_proj(x).reshape(B, L, self.n_kv, self.head_dim).transpose(0, 2, 1, 3)
        if "q_norm" in self:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3)  # (B, H, L, Dh)
        q, k = self._rope(q, step), self._rope(k, step)
        out = cache.attend(self.index, q, k, v, self.scale, step.mask)  # (B, H, L, Dh)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1))

    def _rope(self, x: mx.array, step: "Step") -> mx.array:
        if step.positions is None:
            return mx.fast.rope(x, self.head_dim, traditional=False, base=None, scale=1.0, offset=step.offset,
                                freqs=self._periods)
        angles = step.positions[:, None].astype(mx.float32) / self._periods[None, :]  # (L, Dh/2)
        cos, sin = mx.cos(angles), mx.sin(angles)
        a, b = x[..., : self.head_dim // 2], x[..., self.head_dim // 2:]
        return mx.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)


class Step:
    """What every layer of one forward pass shares: where the inputs sit and what they see."""

    def __init__(self, offset: int, length: int, positions: mx.array | None = None, mask=None):
        self.offset, self.positions = offset, positions
        self.mask = mask if mask is not None else ("causal" if length > 1 else None)  # (L, past + L) additive

    @classmethod
    def of(cls, feed, past: int) -> "Step":
        """The step of a `Feed` over a cache holding `past` tokens: its positions and attention mask."""
        import numpy as np

        positions = None if feed.positions is None else mx.array(np.asarray(feed.positions, np.int32))
        allowed = feed.attention_mask(past)
        mask = None if allowed is None else mx.array(np.where(allowed, 0.0, -np.inf).astype(np.float32))
        return cls(past, feed.length, positions, mask)


class MLP(nn.Module):
    """SwiGLU (gate, up, down), or up → tanh GELU → down (BD3-LM)."""

    def __init__(self, c: DecoderConfig):
        super().__init__()
        h, f = c.hidden_size, c.intermediate_size
        if c.mlp == "swiglu":
            self.gate_proj = nn.Linear(h, f, bias=c.mlp_bias)
        self.up_proj = nn.Linear(h, f, bias=c.mlp_bias)
        self.down_proj = nn.Linear(f, h, bias=c.mlp_bias)

    def __call__(self, x: mx.array) -> mx.array:
        if "gate_proj" in self:
            return self.down_proj(nn.silu(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(nn.gelu_approx(self.up_proj(x)))


def norm(c: DecoderConfig) -> nn.Module:
    if c.norm == "layer":
        return nn.LayerNorm(c.hidden_size, eps=c.rms_norm_eps)
    return nn.RMSNorm(c.hidden_size, eps=c.rms_norm_eps)


class DecoderLayer(nn.Module):
    # Tensor parallelism (runtimes/mlx/distributed.py) sets an all-sum over the group here: this
    # rank's attention and MLP hold a share of the heads and columns, their outputs are partial sums.
    reduce = None

    def __init__(self, c: DecoderConfig, index: int):
        super().__init__()
        self.self_attn = Attention(c, index)
        self.mlp = MLP(c)
        self.input_layernorm = norm(c)
        self.post_attention_layernorm = norm(c)

    def __call__(self, x: mx.array, cache, step: Step) -> mx.array:
        if self.reduce is None:
            x = x + self.self_attn(self.input_layernorm(x), cache, step)
            return x + self.mlp(self.post_attention_layernorm(x))
        x = x + self.reduce(self.self_attn(self.input_layernorm(x), cache, step))
        return x + self.reduce(self.mlp(self.post_attention_layernorm(x)))


class DecoderBody(nn.Module):
    def __init__(self, c: DecoderConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = [DecoderLayer(c, i) for i in range(c.num_hidden_layers)]
        self.norm = norm(c)

    def __call__(self, x: mx.array, cache, step: Step) -> mx.array:
        for layer in self.layers:
            x = layer(x, cache, step)
        return self.norm(x)


class DecoderModel(nn.Module):
    """`model.*` body plus the LM head (`lm_head`, or the embedding when tied)."""

    def __init__(self, c: DecoderConfig):
        super().__init__()
        self.config = c
        self.model = DecoderBody(c)
        if not c.tie_word_embeddings:
            self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=c.lm_head_bias)

    def __call__(self, tokens: mx.array, embeddings: mx.array | None, cache, step: Step,
                 rows: tuple[int, int] | None = None) -> mx.array:
        """Logits (B, rows, vocab) for token ids (B, L_ids) followed by `embeddings` (B, L_e, hidden);
        `rows` = [start, end) of the inputs (None: all). The cache is written but not advanced: the
        caller commits (or not)."""
        h = self.model(self.inputs(tokens, embeddings), cache, step)
        return self.head(h, rows)

    def inputs(self, tokens: mx.array, embeddings: mx.array | None) -> mx.array:
        """(B, L, hidden): the embedded token ids followed by `embeddings`."""
        parts = [self.model.embed_tokens(tokens)] if tokens.shape[1] else []  # (B, L_ids, hidden)
        if embeddings is not None:
            parts.append(embeddings.astype(self.model.norm.weight.dtype))
        return parts[0] if len(parts) == 1 else mx.concatenate(parts, axis=1)

    def head(self, h: mx.array, rows: tuple[int, int] | None) -> mx.array:
        """Logits (B, rows, vocab) of the final (normalised) hidden states `h`."""
        if rows is not None:
            h = h[:, rows[0]:rows[1]]
        if self.config.tie_word_embeddings:
            return self.model.embed_tokens.as_linear(h)
        return self.lm_head(h)  # (B, L, vocab)
