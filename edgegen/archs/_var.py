"""VAR (visual autoregressive, next-scale prediction): a class-conditional transformer over a
multi-scale VQ-VAE, as FoundationVision/VAR releases it. Backend-free: the config, read from the
checkpoint's own tensor shapes (the released `.pth` files carry no config), the upstream state-dict
names, and the fixed linear maps (area / bicubic resampling) that the f̂ accumulation uses.

Names keep upstream's: `blocks.{i}.attn.mat_qkv.weight`, `decoder.up.{l}.block.{j}.conv1.weight`, ...
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping

import numpy as np

from edgegen.core.errors import ConfigError

# The schedules FoundationVision/VAR trains with (utils/arg_util.py), found again from L when a
# checkpoint lacks its `lvl_1L` buffer.
KNOWN_SCHEDULES = ((1, 2, 3, 4, 5, 6, 8, 10, 13, 16), (1, 2, 3, 4, 6, 9, 13, 18, 24, 32),
                   (1, 2, 3, 4, 6, 9, 13, 18, 24, 32, 48, 64))
QUANT_RESI = 0.5  # Φ(h) = (1 - 0.5)·h + 0.5·conv3×3(h) in every released VQ-VAE
VAR_BUFFERS = ("lvl_1L", "attn_bias_for_masking")  # recomputed, never read
PHI_LAYOUTS = {"partial": "quantize.quant_resi.qresi_ls.{i}", "shared": "quantize.quant_resi.qresi",
               "separate": "quantize.quant_resi.{i}"}


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    vocab_size: int = 4096
    z_channels: int = 32  # Cvae
    ch: int = 160
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2  # the decoder has num_res_blocks + 1 blocks per level
    using_sa: bool = True  # attention after each block of the lowest-resolution level
    using_mid_sa: bool = True
    phi_layout: str = "partial"  # partial (share_quant_resi=4) | shared (1) | separate (0: one per scale)
    phi_count: int = 4

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


@dataclasses.dataclass(frozen=True)
class VARConfig:
    depth: int = 16
    embed_dim: int = 1024  # C
    num_heads: int = 16
    num_classes: int = 1000  # class_emb has num_classes + 1 rows; the last is the null class of CFG
    patch_nums: tuple[int, ...] = KNOWN_SCHEDULES[0]
    mlp_hidden: int = 4096
    attn_l2_norm: bool = True
    shared_aln: bool = False
    norm_eps: float = 1e-6
    vae: VAEConfig = dataclasses.field(default_factory=VAEConfig)

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def vocab_size(self) -> int:
        return self.vae.vocab_size

    @property
    def num_tokens(self) -> int:  # L
        return sum(pn * pn for pn in self.patch_nums)

    @property
    def latent_size(self) -> int:
        return self.patch_nums[-1]

    @property
    def image_size(self) -> int:
        return self.latent_size * self.vae.downsample

    def scale_starts(self) -> list[int]:
        """Index of each scale's first token in the flattened pyramid (and L at the end)."""
        return [int(x) for x in np.cumsum([0] + [pn * pn for pn in self.patch_nums])]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def bytes_per_image(c: VARConfig, guided: bool) -> int:
    """What one more image in a batch costs at its peak, from the shapes (float32 unless said):
    the KV cache of every scale, the last scale's activations, attention scores and logits, the
    float64 arrays of top-k/top-p sampling, and the decoder's full-resolution activations."""
    rows, l, L, V = (2 if guided else 1), c.patch_nums[-1] ** 2, c.num_tokens, c.vocab_size
    cache = c.depth * 2 * rows * L * c.embed_dim * 4
    blocks = rows * l * (max(c.mlp_hidden, 3 * c.embed_dim) * 2 + c.num_heads * L) * 4
    sampling = rows * l * V * 4 + 8 * l * V * 8
    side = c.image_size
    decoder = 4 * side * side * c.vae.ch * c.vae.ch_mult[0] * 4
    return int(1.5 * (cache + blocks + sampling + decoder))


def config_from_dict(raw: Mapping[str, Any]) -> VARConfig:
    """The config `to_dict()` wrote into a manifest."""
    try:
        vae = dict(raw["vae"])
        vae["ch_mult"] = tuple(vae["ch_mult"])
        fields = {k: v for k, v in raw.items() if k != "vae" and k in VARConfig.__dataclass_fields__}
        fields["patch_nums"] = tuple(fields["patch_nums"])
        return VARConfig(**fields, vae=VAEConfig(**vae))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"the VAR config in the manifest is malformed ({exc}); convert the model again") from None


# --------------------------------------------------------------------------- reading shapes
def infer_config(var: Mapping[str, tuple[int, ...]], vae: Mapping[str, tuple[int, ...]],
                 lvl_1L: np.ndarray | None = None, num_heads: int | None = None) -> VARConfig:
    """The config of a checkpoint from its tensor shapes (`var`, `vae`: name -> shape). Heads come
    from `scale_mul_1H11`; without it (attn_l2_norm=False) upstream's rule heads = depth applies
    unless `num_heads` says otherwise."""
    _need(var, ("class_emb.weight", "pos_1LC", "lvl_embed.weight", "head.weight", "word_embed.weight"), "VAR")
    num_classes = var["class_emb.weight"][0] - 1
    embed_dim = var["class_emb.weight"][1]
    depth = len({m.group(1) for k in var if (m := re.match(r"blocks\.(\d+)\.", k))})
    l2 = "blocks.0.attn.scale_mul_1H11" in var
    heads = var["blocks.0.attn.scale_mul_1H11"][1] if l2 else (num_heads or depth)
    if depth == 0 or heads < 1 or embed_dim % heads:
        raise ConfigError(f"the VAR checkpoint has {depth} blocks and width {embed_dim}, which {heads} heads "
                          "do not divide; is it a VAR transformer?")
    patch_nums = _schedule(var["pos_1LC"][1], var["lvl_embed.weight"][0], lvl_1L)
    return VARConfig(depth=depth, embed_dim=embed_dim, num_heads=heads, num_classes=num_classes,
                     patch_nums=patch_nums, mlp_hidden=var.get("blocks.0.ffn.fc1.weight", (4 * embed_dim,))[0],
                     attn_l2_norm=l2, shared_aln="shared_ada_lin.1.weight" in var,
                     vae=infer_vae_config(vae))


def _schedule(num_tokens: int, num_scales: int, lvl_1L: np.ndarray | None) -> tuple[int, ...]:
    levels = None if lvl_1L is None else np.asarray(lvl_1L).reshape(-1)
    if levels is not None and levels.size and 0 <= levels.min() and levels.max() < num_scales:  # else: not trusted
        counts = np.bincount(levels.astype(np.int64), minlength=num_scales)
        sides = tuple(int(round(math.sqrt(c))) for c in counts)
        if all(s * s == c for s, c in zip(sides, counts)) and sum(counts) == num_tokens:
            return sides
    for schedule in KNOWN_SCHEDULES:
        if len(schedule) == num_scales and sum(p * p for p in schedule) == num_tokens:
            return schedule
    raise ConfigError(f"cannot tell the scale schedule of a VAR checkpoint with {num_tokens} tokens over "
                      f"{num_scales} scales; add its lvl_1L buffer or a config.json with patch_nums")


def infer_vae_config(vae: Mapping[str, tuple[int, ...]]) -> VAEConfig:
    _need(vae, ("quantize.embedding.weight", "post_quant_conv.weight", "decoder.conv_in.weight",
                "decoder.conv_out.weight"), "VQ-VAE")
    levels = sorted({int(m.group(1)) for k in vae if (m := re.match(r"decoder\.up\.(\d+)\.", k))})
    if not levels or levels != list(range(len(levels))):
        raise ConfigError("the VQ-VAE checkpoint has no decoder.up.* levels; is it a VAR VQ-VAE?")
    widths = [vae[f"decoder.up.{i}.block.0.conv1.weight"][0] for i in levels]
    ch = math.gcd(*widths)
    blocks = len({k.split(".")[4] for k in vae if k.startswith("decoder.up.0.block.")})
    layout = next((name for name, fmt in PHI_LAYOUTS.items() if fmt.format(i=0) + ".weight" in vae), None)
    if layout is None:
        raise ConfigError("the VQ-VAE checkpoint has no quant_resi (Φ) convs; is it a VAR VQ-VAE?")
    count = 1 if layout == "shared" else len({k for k in vae if re.fullmatch(
        PHI_LAYOUTS[layout].format(i=r"\d+").replace(".", r"\.") + r"\.weight", k)})
    return VAEConfig(vocab_size=vae["quantize.embedding.weight"][0], z_channels=vae["post_quant_conv.weight"][0],
                     ch=ch, ch_mult=tuple(w // ch for w in widths), num_res_blocks=blocks - 1,
                     using_sa=f"decoder.up.{levels[-1]}.attn.0.qkv.weight" in vae,
                     using_mid_sa="decoder.mid.attn_1.qkv.weight" in vae, phi_layout=layout, phi_count=count)


def _need(shapes: Mapping[str, Any], names: tuple[str, ...], what: str) -> None:
    missing = [n for n in names if n not in shapes]
    if missing:
        raise ConfigError(f"the {what} checkpoint lacks {', '.join(missing)}; is it a FoundationVision {what} "
                          "state dict?")


# --------------------------------------------------------------------------- expected tensors
def var_shapes(c: VARConfig) -> dict[str, tuple[int, ...]]:
    """Every VAR tensor a converter reads (buffers excluded), with its shape."""
    C, V, H = c.embed_dim, c.vocab_size, c.num_heads
    first = c.patch_nums[0] ** 2
    shapes: dict[str, tuple[int, ...]] = {
        "pos_start": (1, first, C), "pos_1LC": (1, c.num_tokens, C), "lvl_embed.weight": (len(c.patch_nums), C),
        "class_emb.weight": (c.num_classes + 1, C), "word_embed.weight": (C, c.vae.z_channels),
        "word_embed.bias": (C,), "head_nm.ada_lin.1.weight": (2 * C, C), "head_nm.ada_lin.1.bias": (2 * C,),
        "head.weight": (V, C), "head.bias": (V,)}
    if c.shared_aln:
        shapes.update({"shared_ada_lin.1.weight": (6 * C, C), "shared_ada_lin.1.bias": (6 * C,)})
    for i in range(c.depth):
        p = f"blocks.{i}."
        shapes.update({p + "attn.mat_qkv.weight": (3 * C, C), p + "attn.q_bias": (C,), p + "attn.v_bias": (C,),
                       p + "attn.proj.weight": (C, C), p + "attn.proj.bias": (C,),
                       p + "ffn.fc1.weight": (c.mlp_hidden, C), p + "ffn.fc1.bias": (c.mlp_hidden,),
                       p + "ffn.fc2.weight": (C, c.mlp_hidden), p + "ffn.fc2.bias": (C,)})
        if c.attn_l2_norm:
            shapes[p + "attn.scale_mul_1H11"] = (1, H, 1, 1)
        if c.shared_aln:
            shapes[p + "ada_gss"] = (1, 1, 6, C)
        else:
            shapes.update({p + "ada_lin.1.weight": (6 * C, C), p + "ada_lin.1.bias": (6 * C,)})
    return shapes


def var_ignored(name: str) -> bool:
    """Buffers and keys a converter drops on purpose."""
    return name in VAR_BUFFERS or name.endswith(".attn.zero_k_bias")


def vae_shapes(v: VAEConfig) -> dict[str, tuple[int, ...]]:
    """The VQ-VAE tensors generation needs: codebook, Φ convs, post_quant_conv and the decoder."""
    Z = v.z_channels
    shapes = {"quantize.embedding.weight": (v.vocab_size, Z)}
    for i in range(v.phi_count):
        p = PHI_LAYOUTS[v.phi_layout].format(i=i)
        shapes.update({p + ".weight": (Z, Z, 3, 3), p + ".bias": (Z,)})
    _conv(shapes, "post_quant_conv", Z, Z, 3)
    for name, shape in decoder_convs(v).items():
        _conv(shapes, "decoder." + name, *shape)
    for name, channels in decoder_norms(v).items():
        shapes.update({f"decoder.{name}.weight": (channels,), f"decoder.{name}.bias": (channels,)})
    return shapes


def vae_ignored(name: str) -> bool:
    return name.startswith(("encoder.", "quant_conv.")) or name == "quantize.ema_vocab_hit_SV"


def _conv(shapes: dict, name: str, cout: int, cin: int, k: int) -> None:
    shapes[f"{name}.weight"] = (cout, cin, k, k)
    shapes[f"{name}.bias"] = (cout,)


def decoder_plan(v: VAEConfig) -> list[tuple[str, str, int, int]]:
    """The decoder in execution order: (kind, name, in_channels, out_channels), kind one of conv_in,
    res, attn, up, out. `out` is norm_out → SiLU → conv_out."""
    levels = len(v.ch_mult)
    width = v.ch * v.ch_mult[-1]
    plan = [("conv_in", "conv_in", v.z_channels, width), ("res", "mid.block_1", width, width)]
    if v.using_mid_sa:
        plan.append(("attn", "mid.attn_1", width, width))
    plan.append(("res", "mid.block_2", width, width))
    for level in reversed(range(levels)):
        out = v.ch * v.ch_mult[level]
        for j in range(v.num_res_blocks + 1):
            plan.append(("res", f"up.{level}.block.{j}", width, out))
            width = out
            if level == levels - 1 and v.using_sa:
                plan.append(("attn", f"up.{level}.attn.{j}", width, width))
        if level:
            plan.append(("up", f"up.{level}.upsample", width, width))
    plan.append(("out", "conv_out", width, 3))
    return plan


def decoder_convs(v: VAEConfig) -> dict[str, tuple[int, int, int]]:
    convs: dict[str, tuple[int, int, int]] = {}
    for kind, name, cin, cout in decoder_plan(v):
        if kind in ("conv_in", "out"):
            convs[name] = (cout, cin, 3)
        elif kind == "res":
            convs.update({f"{name}.conv1": (cout, cin, 3), f"{name}.conv2": (cout, cout, 3)})
            if cin != cout:
                convs[f"{name}.nin_shortcut"] = (cout, cin, 1)
        elif kind == "attn":
            convs.update({f"{name}.qkv": (3 * cin, cin, 1), f"{name}.proj_out": (cin, cin, 1)})
        else:
            convs[f"{name}.conv"] = (cin, cin, 3)
    return convs


def decoder_norms(v: VAEConfig) -> dict[str, int]:
    norms: dict[str, int] = {}
    for kind, name, cin, cout in decoder_plan(v):
        if kind == "res":
            norms.update({f"{name}.norm1": cin, f"{name}.norm2": cout})
        elif kind == "attn":
            norms[f"{name}.norm"] = cin
        elif kind == "out":
            norms["norm_out"] = cin
    return norms


# --------------------------------------------------------------------------- the scale pyramid
def phi_index(scale: int, num_scales: int, v: VAEConfig) -> int:
    """Which Φ conv scale `scale` uses: the tick nearest to scale/(K−1) (upstream's rule)."""
    if v.phi_layout == "shared":
        return 0
    n = v.phi_count
    ticks = np.linspace(1 / 3 / n, 1 - 1 / 3 / n, n) if n == 4 else np.linspace(1 / 2 / n, 1 - 1 / 2 / n, n)
    return int(np.argmin(np.abs(ticks - scale / max(num_scales - 1, 1))))


def area_matrix(out_size: int, in_size: int) -> np.ndarray:
    """(out, in) float64: adaptive average pooling along one axis (torch's `mode='area'`): output i
    averages inputs [⌊i·in/out⌋, ⌈(i+1)·in/out⌉)."""
    m = np.zeros((out_size, in_size))
    for i in range(out_size):
        lo, hi = (i * in_size) // out_size, -((-(i + 1) * in_size) // out_size)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def bicubic_matrix(out_size: int, in_size: int, a: float = -0.75) -> np.ndarray:
    """(out, in) float64: bicubic interpolation along one axis as torch does it (`mode='bicubic'`,
    align_corners=False): half-pixel centres, Keys kernel with a = −0.75, borders clamped."""
    m = np.zeros((out_size, in_size))
    scale = in_size / out_size
    for i in range(out_size):
        x = (i + 0.5) * scale - 0.5
        x0 = math.floor(x)
        t = x - x0
        weights = (_cubic(t + 1, a), _cubic(t, a), _cubic(1 - t, a), _cubic(2 - t, a))
        for k, w in zip(range(x0 - 1, x0 + 3), weights):
            m[i, min(max(k, 0), in_size - 1)] += w
    return m


def _cubic(x: float, a: float) -> float:
    x = abs(x)
    if x <= 1:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    if x < 2:
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return 0.0
