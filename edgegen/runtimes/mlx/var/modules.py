"""The MLX modules of VAR: the transformer (conditioning + cached step) and the NHWC VQ-VAE
decoder. Imported only once MLX is known to be installed (`edgegen.runtimes.mlx.var.build`)."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from edgegen.archs import _var as arch


class Block(nn.Module):
    def __init__(self, c: arch.VARConfig):
        super().__init__()
        C, self.H = c.embed_dim, c.num_heads
        self.qkv = nn.Linear(C, 3 * C)
        self.scale_mul = mx.ones((c.num_heads, 1, 1))  # exp(min(scale_mul, ln 100)), or 0.25/√hd
        self.proj = nn.Linear(C, C)
        self.fc1, self.fc2 = nn.Linear(C, c.mlp_hidden), nn.Linear(c.mlp_hidden, C)
        self.l2, self.eps = c.attn_l2_norm, c.norm_eps

    def __call__(self, x, ada, cache: list, bias):
        g1, g2, s1, s2, b1, b2 = ada  # each (R, 1, C); s already holds 1 + scale
        R, L, C = x.shape
        h = mx.fast.layer_norm(x, None, None, self.eps) * s1 + b1
        qkv = self.qkv(h).reshape(R, L, 3, self.H, -1).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (R, H, L, hd)
        if self.l2:
            q, k = _l2(q) * self.scale_mul, _l2(k)
        else:
            q = q * self.scale_mul
        if cache[0] is not None:
            k, v = mx.concatenate([cache[0], k], 2), mx.concatenate([cache[1], v], 2)
        cache[0], cache[1] = k, v
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=1.0, mask=bias)
        x = x + self.proj(out.transpose(0, 2, 1, 3).reshape(R, L, C)) * g1
        h = mx.fast.layer_norm(x, None, None, self.eps) * s2 + b2
        return x + self.fc2(nn.gelu_approx(self.fc1(h))) * g2

def _l2(t):
    return t / mx.maximum(mx.sqrt((t * t).sum(-1, keepdims=True)), 1e-12)

class VarTransformer(nn.Module):
    def __init__(self, c: arch.VARConfig):
        super().__init__()
        C, D = c.embed_dim, c.depth
        self.config = c
        if c.shared_aln:
            self.shared_ada = nn.Linear(C, 6 * C)
            self.ada_gss = mx.zeros((D, 6 * C))
            self.head_ada = nn.Linear(C, 2 * C)
        else:
            self.ada = nn.Linear(C, (6 * D + 2) * C)
        self.blocks = [Block(c) for _ in range(D)]
        self.head = nn.Linear(C, c.vocab_size)

    def condition(self, cond):
        """(R, C) → (R, 6·depth + 2, C) with "1 + scale" folded in."""
        c, act = self.config, nn.silu(cond)
        C, D = c.embed_dim, c.depth
        if c.shared_aln:
            blocks = (self.shared_ada(act)[:, None] + self.ada_gss).reshape(-1, 6 * D, C)
            ada = mx.concatenate([blocks, self.head_ada(act).reshape(-1, 2, C)], 1)
        else:
            ada = self.ada(act).reshape(-1, 6 * D + 2, C)
        one = np.zeros((6 * D + 2, 1), np.float32)
        one[[6 * i + j for i in range(D) for j in (2, 3)] + [6 * D]] = 1.0
        return ada + mx.array(one).astype(ada.dtype)

    def __call__(self, x, ada, caches, bias):
        D = self.config.depth
        parts = [ada[:, i: i + 1] for i in range(6 * D + 2)]
        for i, block in enumerate(self.blocks):
            x = block(x, parts[6 * i: 6 * i + 6], caches[i], bias)
        scale, shift = (p.astype(mx.float32) for p in parts[6 * D:])
        h = mx.fast.layer_norm(x.astype(mx.float32), None, None, self.config.norm_eps) * scale + shift
        return self.head(h)

class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = _gn(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _gn(cout), nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def __call__(self, x):
        h = self.conv1(nn.silu(self.norm1(x)))
        h = self.conv2(nn.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if "nin_shortcut" in self else x) + h

class AttnBlock(nn.Module):
    def __init__(self, C: int):
        super().__init__()
        self.norm, self.qkv, self.proj_out = _gn(C), nn.Conv2d(C, 3 * C, 1), nn.Conv2d(C, C, 1)

    def __call__(self, x):
        B, H, W, C = x.shape
        q, k, v = mx.split(self.qkv(self.norm(x)).reshape(B, 1, H * W, 3 * C), 3, axis=-1)
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=C ** -0.5)
        return x + self.proj_out(out.reshape(B, H, W, C))

class Upsample(nn.Module):
    def __init__(self, C: int):
        super().__init__()
        self.conv = nn.Conv2d(C, C, 3, padding=1)

    def __call__(self, x):
        return self.conv(mx.repeat(mx.repeat(x, 2, axis=1), 2, axis=2))

class Out(nn.Module):
    def __init__(self, C: int):
        super().__init__()
        self.norm_out, self.conv_out = _gn(C), nn.Conv2d(C, 3, 3, padding=1)

    def __call__(self, x):
        return self.conv_out(nn.silu(self.norm_out(x)))

def _gn(C: int):
    return nn.GroupNorm(32, C, eps=1e-6, pytorch_compatible=True)

class VarDecoder(nn.Module):
    """NHWC: f̂ (B, h, w, Cvae) → image (B, H, W, 3) in [0, 1]."""

    def __init__(self, c: arch.VARConfig):
        super().__init__()
        Z = c.vae.z_channels
        self.post_quant_conv = nn.Conv2d(Z, Z, 3, padding=1)
        kinds = {"conv_in": lambda i, o: nn.Conv2d(i, o, 3, padding=1), "res": ResBlock,
                 "attn": lambda i, o: AttnBlock(i), "up": lambda i, o: Upsample(i), "out": lambda i, o: Out(i)}
        self.layers = [kinds[kind](cin, cout) for kind, _, cin, cout in arch.decoder_plan(c.vae)]

    def __call__(self, f_hat):
        h = self.post_quant_conv(f_hat)
        for layer in self.layers:
            h = layer(h)
        return (mx.clip(h, -1, 1) + 1) * 0.5
