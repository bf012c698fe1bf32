"""Next-scale sampling for VAR image models (backend-free: it sees only `edgegen.core.scale_ar`).

Per scale k of K: the transformer gives logits for all side² tokens at once; with classifier-free
guidance the batch is [cond; uncond] and the logits are mixed with the released linear ramp
t = cfg·k/(K−1) (no guidance at the first scale, full `cfg` at the last):

    guided = (1 + t)·logits_cond − t·logits_uncond

then top-k (keep values ≥ the k-th largest), top-p (drop the low tail whose mass is ≤ 1 − top_p,
always keeping the maximum) and one draw per token (Gumbel-max). Image i of a run draws from its
own numpy generator seeded with (seed, i), so an image is the same whatever batch it was drawn in.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import numpy as np

from edgegen.core.errors import ConfigError
from edgegen.core.scale_ar import ScaleAR


@dataclasses.dataclass(frozen=True)
class ScaleSampling:
    cfg: float = 4.0  # guidance at the last scale; 0 turns it off (and halves the work)
    top_k: int = 900  # 0 turns it off
    top_p: float = 0.95  # 1 turns it off
    seed: int | None = None

    def validated(self) -> "ScaleSampling":
        for name, value, kinds in (("cfg", self.cfg, (int, float)), ("top-k", self.top_k, (int,)),
                                   ("top-p", self.top_p, (int, float)), ("seed", self.seed, (int, type(None)))):
            if isinstance(value, bool) or not isinstance(value, kinds + (np.integer, np.floating)) or (
                    name in ("top-k", "seed") and isinstance(value, (float, np.floating))):
                raise ConfigError(f"--{name} must be {'an integer' if name in ('top-k', 'seed') else 'a number'}, "
                                  f"not {value!r:.40}")
        if not np.isfinite(self.cfg) or self.cfg < 0:
            raise ConfigError(f"--cfg must be a finite number ≥ 0, not {self.cfg}")
        if self.top_k < 0:
            raise ConfigError(f"--top-k must be ≥ 0 (0 turns it off), not {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"--top-p must be in (0, 1], not {self.top_p}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise ConfigError(f"--seed must be a non-negative integer below 2**63, not {self.seed}")
        return self


@dataclasses.dataclass
class ScaleTiming:
    """Seconds spent: transformer (+ sampling and f̂ updates) per scale, and the decoder."""

    scales: list[float] = dataclasses.field(default_factory=list)  # per scale, summed over batches
    decoder: float = 0.0

    def add_scale(self, scale: int, seconds: float) -> None:
        if scale < len(self.scales):
            self.scales[scale] += seconds
        else:
            self.scales.append(seconds)

    @property
    def transformer(self) -> float:
        return float(sum(self.scales))

    @property
    def total(self) -> float:
        return self.transformer + self.decoder


def guidance(scale: int, num_scales: int, cfg: float) -> float:
    """The released ramp: t = cfg·k/(K−1)."""
    return cfg * scale / max(num_scales - 1, 1)


def mix(logits: np.ndarray, t: float) -> np.ndarray:
    """(2B, l, V) [cond; uncond] → (B, l, V) guided logits."""
    half = logits.shape[0] // 2
    cond, uncond = logits[:half], logits[half:]
    return cond if t == 0 else (1 + t) * cond - t * uncond


def filter_logits(logits: np.ndarray, top_k: int, top_p: float) -> np.ndarray:
    """float64 logits with the tokens top-k / top-p exclude set to −inf (over the last axis)."""
    x = np.array(logits, dtype=np.float64)
    V = x.shape[-1]
    if 0 < top_k < V:
        kth = np.partition(x, V - top_k, axis=-1)[..., V - top_k: V - top_k + 1]
        x[x < kth] = -np.inf
    if top_p < 1:
        order = np.argsort(x, axis=-1, kind="stable")  # ascending
        ranked = np.take_along_axis(x, order, -1)
        probs = np.exp(ranked - ranked[..., -1:])
        probs /= probs.sum(-1, keepdims=True)
        drop = np.cumsum(probs, -1) <= 1 - top_p
        drop[..., -1] = False  # the most likely token always stays
        np.put_along_axis(x, order, np.where(drop, -np.inf, ranked), -1)
    return x


def sample(logits: np.ndarray, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """One token per row of the last axis, drawn from softmax(logits) by Gumbel-max (int64); row b
    of the first axis draws from `rngs[b]`."""
    noise = np.stack([rng.gumbel(size=logits.shape[1:]) for rng in rngs])
    return np.argmax(logits + noise, axis=-1).astype(np.int64)


def image_rngs(seed: int | None, first: int, count: int) -> list[np.random.Generator]:
    """The generators of images first .. first + count − 1 of a run (fresh entropy without a seed)."""
    if seed is None:
        return [np.random.default_rng() for _ in range(count)]
    return [np.random.default_rng((seed, first + i)) for i in range(count)]


OnScale = Callable[[int, int, float], None]  # (scale index, number of scales, seconds)


def generate_scales(model: ScaleAR, class_ids: Sequence[int], sampling: ScaleSampling | None = None,
                    on_scale: OnScale | None = None, timing: ScaleTiming | None = None,
                    first_image: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """Images (B, H, W, 3) float32 in [0, 1] for `class_ids`, and the sampled tokens per scale.
    `first_image`: the run's index of the first of them (a later batch of a larger run)."""
    sampling = (sampling or ScaleSampling()).validated()
    ids = [int(i) for i in class_ids]
    bad = [i for i in ids if not 0 <= i < model.num_classes]
    if bad or not ids:
        raise ConfigError(f"class ids must be in 0..{model.num_classes - 1}" + (f", not {bad[0]}" if bad else
                                                                               "; give at least one"))
    rngs = image_rngs(sampling.seed, first_image, len(ids))
    timing = timing if timing is not None else ScaleTiming()
    guided = sampling.cfg > 0
    run = model.start(ids, guided)
    K, tokens = len(model.patch_nums), []
    for k in range(K):
        start = time.perf_counter()
        logits = run.logits()
        if guided:
            logits = mix(logits, guidance(k, K, sampling.cfg))
        chosen = sample(filter_logits(logits, sampling.top_k, sampling.top_p), rngs)
        run.push(chosen)
        tokens.append(chosen)
        seconds = time.perf_counter() - start
        timing.add_scale(k, seconds)
        if on_scale is not None:
            on_scale(k, K, seconds)
    start = time.perf_counter()
    images = run.image()
    timing.decoder += time.perf_counter() - start
    return images, tokens
