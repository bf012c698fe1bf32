"""Which masked positions a diffusion LLM commits after one forward pass.

Every rule sees the candidates' logits (the masked positions of the current block or sub-block),
proposes a token for each (argmax, or a sample when the temperature is above 0; never the mask id)
and returns the candidates to commit. Shared invariants: only masked candidates are chosen, the
count is clamped to the candidates present (upstream quotas computed from the block size can
overwrite prompt tokens), and at least one is committed per forward so decoding always advances.

    fixed            a quota per step: the masked count at block start split over `steps` (LLaDA)
    threshold        every candidate with confidence ≥ τ, and always the most confident (Fast-dLLM)
    factor           the largest n whose sorted confidences satisfy c_i ≥ 1 − f / (i + 1) (Fast-dLLM)
    dynamic          all above τ when they reach the step's quota, else the quota's top (SDAR)
    entropy_bounded  the lowest-entropy candidates whose summed entropy stays ≤ γ (SDAR / JetEngine)
    first_hitting    one candidate, uniformly at random (BD3-LM)
    origin           each candidate with probability 1 − s/t on Dream's timestep schedule
    maskgit_plus, topk_margin, entropy
                     Dream's confidences (top-1 probability, top-1 − top-2, negative entropy); the
                     top ⌊n·(1 − s/t)⌋ by confidence, or drawn by softmax(conf / alg_temp)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from edgegen.core.errors import ConfigError
from edgegen.decoding.sampling import Sampler

RULES = ("fixed", "threshold", "factor", "dynamic", "entropy_bounded", "first_hitting", "origin", "maskgit_plus",
         "topk_margin", "entropy")


@dataclasses.dataclass(frozen=True)
class RuleSettings:
    rule: str = "threshold"
    threshold: float = 0.9
    factor: float = 1.0
    entropy_bound: float = 0.35
    steps: int = 4  # forwards per block the quota / timestep schedules are spread over
    alg_temp: float = 0.0  # Dream: 0 picks the top confidences, > 0 draws them
    eps: float = 1e-3  # Dream's timestep floor

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ConfigError(f"unknown commit rule {self.rule!r}; choose one of {', '.join(RULES)}")


@dataclasses.dataclass
class Step:
    """One decision: the candidates' processed logits and what the rule needs to know."""

    logits: np.ndarray  # (n, vocab), the mask id already excluded
    index: int  # forwards done in this block so far
    masked_at_start: int  # masked positions when the block started (the quota's base)


def propose(logits: np.ndarray, sampler: Sampler, history: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(tokens (n,), probabilities (n, vocab)) for each candidate row."""
    if sampler.params.greedy:  # one vectorised softmax over the candidates' rows
        z = np.asarray(logits, dtype=np.float32)
        probs = np.exp(z - z.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        return probs.argmax(-1), probs
    probs = np.stack([sampler.probs(row, history) for row in logits])
    return np.array([sampler.rng.choice(p.size, p=p) for p in probs]), probs


def choose(settings: RuleSettings, step: Step, tokens: np.ndarray, probs: np.ndarray,
           rng: np.random.Generator) -> np.ndarray:
    """Indices (into the candidates) to commit; at least one, at most all."""
    n = len(tokens)
    rule = settings.rule
    conf = probs[np.arange(n), tokens]
    if rule == "first_hitting":
        return rng.choice(n, size=1)
    if rule in ("threshold", "dynamic", "fixed"):
        quota = _quota(step, settings.steps, n)
        above = np.flatnonzero(conf >= settings.threshold)
        if rule == "threshold" or (rule == "dynamic" and len(above) >= quota):
            return above if len(above) else _top(conf, 1)
        return _top(conf, quota)
    if rule == "factor":
        order = np.argsort(-conf, kind="stable")
        ok = conf[order] >= 1 - settings.factor / (np.arange(n) + 2)  # c_(i) with i from 1
        count = int(np.argmin(ok)) if not ok.all() else n
        return order[: max(count, 1)]
    if rule == "entropy_bounded":
        entropy = _entropy(probs)
        order = np.argsort(entropy, kind="stable")
        count = int(np.searchsorted(np.cumsum(entropy[order]), settings.entropy_bound, side="right"))
        return order[: max(count, 1)]
    return _dream(settings, step, conf, probs, rng)


def _dream(settings: RuleSettings, step: Step, conf: np.ndarray, probs: np.ndarray,
           rng: np.random.Generator) -> np.ndarray:
    n = len(conf)
    t, s = _times(settings, step.index)
    last = step.index >= settings.steps - 1
    if settings.rule == "origin":
        if last:
            return np.arange(n)
        chosen = np.flatnonzero(rng.random(n) < 1 - s / t)
        return chosen if len(chosen) else rng.choice(n, size=1)
    if settings.rule == "topk_margin":
        top2 = np.sort(probs, axis=-1)[:, -2:]
        conf = top2[:, 1] - top2[:, 0]
    elif settings.rule == "entropy":
        conf = -_entropy(probs)
    count = n if last else min(n, max(1, int(n * (1 - s / t))))
    if settings.alg_temp > 0:
        weights = _softmax(conf / settings.alg_temp)
        return rng.choice(n, size=count, replace=False, p=weights)
    return _top(conf, count)


def _times(settings: RuleSettings, index: int) -> tuple[float, float]:
    ts = np.linspace(1, settings.eps, settings.steps + 1)
    i = min(index, settings.steps - 1)
    return float(ts[i]), float(ts[i + 1])


def _quota(step: Step, steps: int, candidates: int) -> int:
    """LLaDA's schedule: the masked count at block start split as evenly as possible over `steps`,
    the remainder to the first steps; clamped to the candidates present."""
    base, extra = divmod(step.masked_at_start, max(steps, 1))
    quota = base + (1 if step.index < extra else 0)
    return min(max(quota, 1), candidates)


def _top(conf: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-conf, kind="stable")[:k]


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.asarray(x, dtype=np.float64)
    z = np.exp(z - z.max())
    return z / z.sum()


def _entropy(probs: np.ndarray) -> np.ndarray:
    return -(probs * np.log(np.clip(probs, 1e-30, None))).sum(-1)
