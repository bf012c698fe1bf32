"""How many tokens to draft before the next verification: fixed, or chosen so that speculation pays
for itself.

With per-position acceptance α, a draft of γ tokens yields E(γ) = (1 − α^{γ+1}) / (1 − α) tokens
per verification and costs T_draft(γ) + T_verify(γ + 1), both measured on this machine as decoding
goes (verification is not free on a CPU: it grows with γ). The choice maximises E(γ) / cost(γ)
over [0, max]; γ = 0 is plain decoding. When plain decoding wins, a one-token probe now and then
(ever rarer while probes keep losing) keeps α and the costs current.
"""

from __future__ import annotations

DECAY = 0.9  # weight of the past in the running acceptance counts and cost averages
PROBE_FIRST, PROBE_MAX = 8, 256  # iterations between probes while plain decoding wins


class DraftLength:
    def __init__(self, fixed: int | None = None, maximum: int = 8):
        self.fixed, self.maximum = fixed, maximum
        self.accepts, self.rejects = 1.0, 1.0  # a weak prior: α = 0.5
        self.per_draft: float | None = None  # seconds per drafted token (0 for free drafters)
        self.verify: dict[int, float] = {}  # verified tokens -> seconds
        self._since_probe, self._probe_every = 0, PROBE_FIRST
        self._warmup = 2  # the first verifications draft one token: cheap, and enough to measure

    @property
    def alpha(self) -> float:
        return self.accepts / (self.accepts + self.rejects)

    def next(self) -> int:
        if self.fixed is not None:
            return self.fixed
        if self._warmup:
            self._warmup -= 1
            return 1
        best = max(range(self.maximum + 1), key=self._rate)
        if best > 0:
            self._since_probe, self._probe_every = 0, PROBE_FIRST
            return best
        self._since_probe += 1
        if self._since_probe >= self._probe_every:
            self._since_probe, self._probe_every = 0, min(2 * self._probe_every, PROBE_MAX)
            return 1
        return 0

    def observe(self, drafted: int, accepted: int, draft_seconds: float | None, verify_seconds: float) -> None:
        """One verification: tokens drafted and accepted, the drafter's steady-state cost (None:
        not measured this time) and the target forward's time."""
        n = drafted + 1
        self.verify[n] = _average(self.verify.get(n), verify_seconds)
        if drafted and draft_seconds is not None:
            self.per_draft = _average(self.per_draft, draft_seconds / drafted)
        if drafted:
            self.accepts = DECAY * self.accepts + accepted
            self.rejects = DECAY * self.rejects + (1 if accepted < drafted else 0)

    def _rate(self, gamma: int) -> float:
        """Expected tokens per second with drafts of `gamma`."""
        a = min(self.alpha, 0.999)
        tokens = (1 - a ** (gamma + 1)) / (1 - a)
        cost = gamma * (self.per_draft or 0.0) + self._verify_seconds(gamma + 1)
        return tokens / cost if cost > 0 else tokens

    def _verify_seconds(self, n: int) -> float:
        """Measured, or a least-squares line through what was measured (never decreasing in n)."""
        if n in self.verify:
            return self.verify[n]
        if not self.verify:
            return 1.0 + 0.1 * (n - 1)
        points = sorted(self.verify.items())
        if len(points) == 1:
            (n0, t0), = points
            return t0 * (1 + 0.1 * (n - n0))
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(sum((x - mx) ** 2 for x in xs), 1e-12)
        return max(my + max(slope, 0.0) * (n - mx), min(ys))


def _average(old: float | None, new: float) -> float:
    return new if old is None else DECAY * old + (1 - DECAY) * new
