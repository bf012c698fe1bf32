"""How many tokens to draft before the next verification: fixed, or chosen so that speculation pays
for itself.

With per-position acceptance α, a draft of γ tokens yields E(γ) = (1 − α^{γ+1}) / (1 − α) tokens
per verification. Its cost is measured here, not assumed: the wall time of whole iterations
(drafting, the target's forward over γ + 1 tokens, the acceptance test and every overhead around
them) for each γ used, and a least-squares line cost(γ) = a + b·γ through them for the others. On a
CPU verification is not free and on tiny models every forward is mostly fixed overhead, so the line
is what decides. The choice maximises E(γ) / cost(γ) over [0, max]; γ = 0 is plain decoding.

While plain decoding wins, a one-token probe now and then keeps α and the costs current. A probe
is not free: besides its own iteration, a draft model must first catch up on every token decided
since it last ran (on a backend whose forward costs grow with the tokens fed, such as MLX on a
CPU, that is as dear as having drafted all along). Probes therefore come ever rarer while they keep
losing, and only while what they have cost beyond plain decoding, with the next one's estimate
(the drafter's catch-up estimate, from its measured seconds per token), stays within `BUDGET` of
the time spent decoding.
"""

from __future__ import annotations

import collections
import statistics

DECAY = 0.9  # weight of the past in the running acceptance counts
WINDOW = 16  # iteration times kept per draft length; their median is its cost (robust to outliers)
PROBE_FIRST, PROBE_MAX = 8, 256  # iterations between probes while plain decoding wins
BUDGET = 0.03  # probes may cost at most this share of the decoding time beyond plain decoding
PLAIN_EVERY = 16  # while drafting wins, one plain step in this many keeps the baseline's cost current
WARMUP = (1, 0)  # the first iterations: the two cheapest points of the cost line, and a first α


class DraftLength:
    def __init__(self, fixed: int | None = None, maximum: int = 8):
        self.fixed, self.maximum = fixed, maximum
        self.accepts, self.rejects = 1.0, 1.0  # a weak prior: α = 0.5
        self.samples: dict[int, collections.deque] = {}  # γ -> recent seconds per iteration
        self._since_probe, self._probe_every = 0, PROBE_FIRST
        self._since_plain = 0
        self._warmup = [g for g in WARMUP if g <= maximum]
        self._elapsed = self._explored = 0.0  # seconds decoding; seconds probes cost beyond plain decoding
        self._probing = False

    @property
    def alpha(self) -> float:
        return self.accepts / (self.accepts + self.rejects)

    def next(self, catch_up: float = 0.0) -> int:
        """The next draft length; `catch_up`: the drafter's estimate of the seconds it would first
        spend catching up on the tokens decided since it last ran."""
        self._probing = False
        if self.fixed is not None:
            return self.fixed
        if self._warmup:
            return self._warmup.pop(0)
        costs = self._costs()
        best = max(range(self.maximum + 1), key=lambda g: self._rate(g, costs[g]))
        if best > 0:
            self._since_probe, self._probe_every = 0, PROBE_FIRST
            self._since_plain += 1
            if self._since_plain >= PLAIN_EVERY:
                self._since_plain = 0
                return 0
            return best
        self._since_probe += 1
        if self._since_probe < self._probe_every:
            return 0
        self._since_probe, self._probe_every = 0, min(2 * self._probe_every, PROBE_MAX)
        estimate = catch_up + max(costs[1] - costs[0] * (1 + self.alpha), 0.0)
        if self._explored + estimate > BUDGET * (self._elapsed + estimate):
            return 0
        self._probing = True
        return 1

    def observe(self, drafted: int, accepted: int, seconds: float | None, overhead: float = 0.0) -> None:
        """One iteration: tokens drafted (0: a plain step) and accepted, its steady-state wall time
        (None when it cannot stand for the steady state) and the drafter's one-off `overhead`."""
        if seconds is not None:
            self.samples.setdefault(drafted, collections.deque(maxlen=WINDOW)).append(seconds)
            self._elapsed += seconds + overhead
            if self._probing:
                self._explored += seconds + overhead - self._costs()[0] * (accepted + 1)
        if drafted:
            self.accepts = DECAY * self.accepts + accepted
            self.rejects = DECAY * self.rejects + (1 if accepted < drafted else 0)

    def _rate(self, gamma: int, cost: float) -> float:
        """Expected tokens per second with drafts of `gamma`."""
        a = min(self.alpha, 0.999)
        return (1 - a ** (gamma + 1)) / (1 - a) / max(cost, 1e-9)

    def _costs(self) -> list[float]:
        """Seconds per iteration for γ = 0..max: measured, or the least-squares line through what
        was measured (slope ≥ 0)."""
        measured = {g: statistics.median(times) for g, times in self.samples.items()}
        points = sorted(measured.items())
        if not points:
            line = (1.0, 0.5)  # nothing measured yet: drafting costs something
        elif len(points) == 1:
            line = (points[0][1] * (1 - 0.5 * points[0][0]), 0.5 * points[0][1])
        else:
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(sum((x - mx) ** 2 for x in xs), 1e-12)
            slope = max(slope, 0.0)
            line = (my - slope * mx, slope)
        floor = min((p[1] for p in points), default=0.0)
        return [measured[g] if g in measured else max(line[0] + line[1] * g, floor) for g in range(self.maximum + 1)]
