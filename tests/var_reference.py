"""A PyTorch VAR + multi-scale VQ-VAE written from the architecture description
(shared/reference/var-image-models.md §1.2-1.4), with FoundationVision's state-dict names, so that
`state_dict()` is a checkpoint our converter reads. It is the oracle of the tests (resampling with
`F.interpolate`, not our matrices) and the model `examples/train_tiny_var.py` trains.
"""

from __future__ import annotations

import math
import time
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SCHEDULE_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


# ============================================================================ transformer
class Attention(nn.Module):
    def __init__(self, C: int, H: int, l2_norm: bool):
        super().__init__()
        self.H, self.l2_norm = H, l2_norm
        self.mat_qkv = nn.Linear(C, 3 * C, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.zeros(C)), nn.Parameter(torch.zeros(C))
        self.register_buffer("zero_k_bias", torch.zeros(C))
        if l2_norm:
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, H, 1, 1), math.log(4.0)))
        self.proj = nn.Linear(C, C)

    def forward(self, x, bias=None, cache: list | None = None):
        B, L, C = x.shape
        qkv = F.linear(x, self.mat_qkv.weight, torch.cat([self.q_bias, self.zero_k_bias, self.v_bias]))
        q, k, v = qkv.view(B, L, 3, self.H, C // self.H).permute(2, 0, 3, 1, 4)  # each (B, H, L, hd)
        if self.l2_norm:
            q = F.normalize(q, dim=-1) * self.scale_mul_1H11.clamp(max=math.log(100.0)).exp()
            k, scale = F.normalize(k, dim=-1), 1.0
        else:
            scale = 0.25 / math.sqrt(C // self.H)
        if cache is not None:  # append before attending: a scale sees itself and every earlier scale
            if cache:
                k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
            cache[:] = [k, v]
        att = (q @ k.transpose(-1, -2)) * scale
        if bias is not None:
            att = att + bias
        out = att.softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(B, L, C))


class FFN(nn.Module):
    def __init__(self, C: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(C, hidden), nn.Linear(hidden, C)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, C: int, H: int, l2_norm: bool, shared_aln: bool, hidden: int):
        super().__init__()
        self.C, self.shared_aln = C, shared_aln
        self.attn, self.ffn = Attention(C, H, l2_norm), FFN(C, hidden)
        if shared_aln:
            self.ada_gss = nn.Parameter(torch.zeros(1, 1, 6, C))
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))

    def forward(self, x, cond, bias=None, cache=None):
        ada = (self.ada_gss + cond) if self.shared_aln else self.ada_lin(cond).view(-1, 1, 6, self.C)
        g1, g2, s1, s2, b1, b2 = ada.unbind(2)  # each (B, 1, C)
        ln = lambda t: F.layer_norm(t, (self.C,), eps=1e-6)  # noqa: E731
        x = x + self.attn(ln(x) * (1 + s1) + b1, bias, cache) * g1
        return x + self.ffn(ln(x) * (1 + s2) + b2) * g2


class VAR(nn.Module):
    def __init__(self, depth=2, C=64, H=4, V=64, Cvae=8, num_classes=10, patch_nums=SCHEDULE_256,
                 l2_norm=True, shared_aln=False, mlp_ratio=4.0):
        super().__init__()
        self.C, self.V, self.Cvae, self.num_classes = C, V, Cvae, num_classes
        self.patch_nums = tuple(patch_nums)
        self.L = sum(p * p for p in patch_nums)
        self.first = patch_nums[0] ** 2
        self.word_embed = nn.Linear(Cvae, C)
        self.class_emb = nn.Embedding(num_classes + 1, C)
        self.pos_start = nn.Parameter(torch.zeros(1, self.first, C))
        self.pos_1LC = nn.Parameter(torch.zeros(1, self.L, C))
        self.lvl_embed = nn.Embedding(len(patch_nums), C)
        if shared_aln:
            self.shared_ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))
        self.shared_aln = shared_aln
        self.blocks = nn.ModuleList([Block(C, H, l2_norm, shared_aln, round(C * mlp_ratio)) for _ in range(depth)])
        level = torch.cat([torch.full((p * p,), i) for i, p in enumerate(patch_nums)])
        self.register_buffer("lvl_1L", level.view(1, -1))
        mask = torch.where(level[:, None] >= level[None, :], 0.0, -torch.inf)
        self.register_buffer("attn_bias_for_masking", mask.view(1, 1, self.L, self.L))
        self.head_nm = nn.Module()
        self.head_nm.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 2 * C))
        self.head = nn.Linear(C, V)

    def block_cond(self, cond):
        return self.shared_ada_lin(cond).view(-1, 1, 6, self.C) if self.shared_aln else cond

    def logits(self, x, cond):
        scale, shift = self.head_nm.ada_lin(cond).view(-1, 1, 2, self.C).unbind(2)
        return self.head(F.layer_norm(x, (self.C,), eps=1e-6) * (1 + scale) + shift)

    def lvl_pos(self):
        return self.lvl_embed(self.lvl_1L) + self.pos_1LC  # (1, L, C)

    def forward(self, labels, x_wo_first):
        """Teacher forcing: (B,) labels and (B, L − first, Cvae) inputs → (B, L, V) logits,
        block-causal (a token sees its own scale and every earlier one)."""
        cond = self.class_emb(labels)
        sos = cond[:, None] + self.pos_start
        x = torch.cat([sos, self.word_embed(x_wo_first)], 1) + self.lvl_pos()
        for block in self.blocks:
            x = block(x, self.block_cond(cond), self.attn_bias_for_masking)
        return self.logits(x, cond)

    def first_input(self, cond):
        return cond[:, None] + self.pos_start + self.lvl_pos()[:, : self.first]

    def next_input(self, z, scale):
        """(B, pn², Cvae) → the transformer input of scale `scale`."""
        begin = sum(p * p for p in self.patch_nums[:scale])
        return self.word_embed(z) + self.lvl_pos()[:, begin: begin + z.shape[1]]

    def step(self, x, cond, caches):
        for block, cache in zip(self.blocks, caches):
            x = block(x, self.block_cond(cond), None, cache)
        return self.logits(x, cond)


# ============================================================================ VQ-VAE
def group_norm(C: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, C, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = group_norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = group_norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        return self.nin_shortcut(x) + self.conv2(F.silu(self.norm2(h)))


class AttnBlock(nn.Module):
    def __init__(self, C: int):
        super().__init__()
        self.norm, self.qkv, self.proj_out = group_norm(C), nn.Conv2d(C, 3 * C, 1), nn.Conv2d(C, C, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).view(B, 3, C, H * W).unbind(1)  # each (B, C, HW)
        w = (q.transpose(1, 2) @ k * C ** -0.5).softmax(-1)  # (B, HWq, HWk)
        return x + self.proj_out((v @ w.transpose(1, 2)).view(B, C, H, W))


class Upsample(nn.Module):
    def __init__(self, C: int):
        super().__init__()
        self.conv = nn.Conv2d(C, C, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Downsample(nn.Module):
    def __init__(self, C: int):
        super().__init__()
        self.conv = nn.Conv2d(C, C, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


def _level(blocks, attns, upsample=None) -> nn.Module:
    m = nn.Module()
    m.block, m.attn = nn.ModuleList(blocks), nn.ModuleList(attns)
    if upsample is not None:
        m.upsample = upsample
    return m


class Decoder(nn.Module):
    def __init__(self, ch, ch_mult, num_res_blocks, z, using_sa=True, using_mid_sa=True):
        super().__init__()
        width = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z, width, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1, self.mid.block_2 = ResBlock(width, width), ResBlock(width, width)
        self.mid.attn_1 = AttnBlock(width) if using_mid_sa else nn.Identity()
        levels = []
        for i in reversed(range(len(ch_mult))):
            blocks, attns = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResBlock(width, ch * ch_mult[i]))
                width = ch * ch_mult[i]
                if i == len(ch_mult) - 1 and using_sa:
                    attns.append(AttnBlock(width))
            levels.insert(0, _level(blocks, attns, Upsample(width) if i else None))
        self.up = nn.ModuleList(levels)
        self.norm_out, self.conv_out = group_norm(width), nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, z):
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for i in reversed(range(len(self.up))):
            level = self.up[i]
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if i:
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Encoder(nn.Module):
    def __init__(self, ch, ch_mult, num_res_blocks, z, using_sa=True, using_mid_sa=True):
        super().__init__()
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        width, levels = ch, []
        for i, mult in enumerate(ch_mult):
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(width, ch * mult))
                width = ch * mult
                if i == len(ch_mult) - 1 and using_sa:
                    attns.append(AttnBlock(width))
            level = _level(blocks, attns)
            if i != len(ch_mult) - 1:
                level.downsample = Downsample(width)
            levels.append(level)
        self.down = nn.ModuleList(levels)
        self.mid = nn.Module()
        self.mid.block_1, self.mid.block_2 = ResBlock(width, width), ResBlock(width, width)
        self.mid.attn_1 = AttnBlock(width) if using_mid_sa else nn.Identity()
        self.norm_out, self.conv_out = group_norm(width), nn.Conv2d(width, z, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for i, level in enumerate(self.down):
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Phi(nn.Conv2d):
    def __init__(self, C: int):
        super().__init__(C, C, 3, padding=1)

    def forward(self, h):
        return 0.5 * h + 0.5 * super().forward(h)


class Quantizer(nn.Module):
    """Residual multi-scale quantization with 4 partially shared Φ convs (upstream's default)."""

    def __init__(self, V: int, Cvae: int, patch_nums: Sequence[int], n_phi: int = 4):
        super().__init__()
        self.patch_nums = tuple(patch_nums)
        self.embedding = nn.Embedding(V, Cvae)
        self.quant_resi = nn.Module()
        self.quant_resi.qresi_ls = nn.ModuleList([Phi(Cvae) for _ in range(n_phi)])
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(patch_nums), V))
        n = n_phi  # float64 ticks, as upstream computes them with numpy (ties at K=10 depend on it)
        self.ticks = np.linspace(1 / 3 / n, 1 - 1 / 3 / n, n) if n == 4 else np.linspace(1 / 2 / n, 1 - 1 / 2 / n, n)

    def phi(self, si: int) -> Phi:
        r = si / (len(self.patch_nums) - 1)
        return self.quant_resi.qresi_ls[int(np.argmin(np.abs(self.ticks - r)))]

    def lift(self, si: int, h):
        """A scale's (B, Cvae, pn, pn) embeddings → its Φ-refined contribution to f̂ at full size."""
        full = self.patch_nums[-1]
        if si != len(self.patch_nums) - 1:
            h = F.interpolate(h, size=(full, full), mode="bicubic")
        return self.phi(si)(h)

    def embed(self, idx, pn: int):
        return self.embedding(idx).transpose(1, 2).reshape(idx.shape[0], -1, pn, pn)

    def tokens(self, f):
        """Encoder features (B, Cvae, h, w) → token ids per scale, and f̂ (residual quantization)."""
        rest, f_hat, out = f.clone(), torch.zeros_like(f), []
        for si, pn in enumerate(self.patch_nums):
            z = F.interpolate(rest, size=(pn, pn), mode="area") if si != len(self.patch_nums) - 1 else rest
            zf = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
            idx = torch.cdist(zf, self.embedding.weight).argmin(1).view(f.shape[0], pn * pn)
            h = self.lift(si, self.embed(idx, pn))
            f_hat, rest = f_hat + h, rest - h
            out.append(idx)
        return out, f_hat

    def var_input(self, idx_per_scale):
        """Teacher-forcing input (B, L − first, Cvae): area-down of the running f̂ to each next scale."""
        B, full = idx_per_scale[0].shape[0], self.patch_nums[-1]
        f_hat = torch.zeros(B, self.embedding.weight.shape[1], full, full)
        inputs = []
        for si in range(len(self.patch_nums) - 1):
            f_hat = f_hat + self.lift(si, self.embed(idx_per_scale[si], self.patch_nums[si]))
            nxt = self.patch_nums[si + 1]
            inputs.append(F.interpolate(f_hat, size=(nxt, nxt), mode="area").flatten(2).transpose(1, 2))
        return torch.cat(inputs, 1)


class VQVAE(nn.Module):
    def __init__(self, V=64, Cvae=8, ch=32, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=1, patch_nums=SCHEDULE_256,
                 using_sa=True, using_mid_sa=True):
        super().__init__()
        args = (ch, ch_mult, num_res_blocks, Cvae, using_sa, using_mid_sa)
        self.encoder, self.decoder = Encoder(*args), Decoder(*args)
        self.quantize = Quantizer(V, Cvae, patch_nums)
        self.quant_conv = nn.Conv2d(Cvae, Cvae, 3, padding=1)
        self.post_quant_conv = nn.Conv2d(Cvae, Cvae, 3, padding=1)

    def fhat_to_img(self, f_hat):
        """f̂ → image in [0, 1]."""
        return (self.decoder(self.post_quant_conv(f_hat)).clamp(-1, 1) + 1) / 2


# ============================================================================ inference with injected tokens
@torch.no_grad()
def run_scales(var: VAR, vae: VQVAE, labels, cfg: float, tokens=None, pick=None, timing: dict | None = None):
    """The cached inference loop with CFG (batch [cond; uncond]). Per scale, the guided logits go
    to `pick(scale, logits (B, pn², V)) → tokens (B, pn²)` unless `tokens[scale]` is given.
    Returns (raw logits per scale (2B, pn², V), tokens per scale, f̂ after each scale, image);
    `timing` (if given) receives the seconds of the scales ("transformer") and of the decoder."""
    start = time.perf_counter()
    B, K, q = len(labels), len(var.patch_nums), vae.quantize
    labels = torch.as_tensor(labels)
    cond = var.class_emb(torch.cat([labels, torch.full_like(labels, var.num_classes)]))
    caches = [[] for _ in var.blocks]
    x = var.first_input(cond)
    full = var.patch_nums[-1]
    f_hat = torch.zeros(B, q.embedding.weight.shape[1], full, full)
    all_logits, all_tokens, f_hats = [], [], []
    for si, pn in enumerate(var.patch_nums):
        logits = var.step(x, cond, caches)
        all_logits.append(logits)
        t = cfg * si / (K - 1)
        guided = (1 + t) * logits[:B] - t * logits[B:]
        idx = torch.as_tensor(tokens[si]) if tokens is not None else pick(si, guided)
        all_tokens.append(idx)
        f_hat = f_hat + q.lift(si, q.embed(idx, pn))
        f_hats.append(f_hat.clone())
        if si != K - 1:
            nxt = var.patch_nums[si + 1]
            z = F.interpolate(f_hat, size=(nxt, nxt), mode="area").flatten(2).transpose(1, 2)
            x = var.next_input(z, si + 1).repeat(2, 1, 1)
    middle = time.perf_counter()
    image = vae.fhat_to_img(f_hat)
    if timing is not None:
        timing.update(transformer=middle - start, decoder=time.perf_counter() - middle)
    return all_logits, all_tokens, f_hats, image


def randomize(module: nn.Module, std: float = 0.3, seed: int = 0) -> nn.Module:
    """Every parameter ~ N(0, std) (not upstream's init, whose tiny gammas hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module
