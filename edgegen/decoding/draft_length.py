"""How many tokens to draft before the next verification: fixed, or chosen so that speculation pays
for itself.

A draft of γ tokens yields E(γ) = 1 + Σ_{i≤γ} Π_{j≤i} h_j tokens per verification, h_j the chance
that draft j is accepted once drafts 1..j−1 were. Two rates are kept: h_1, and one h for every later
position (one α for all would give the familiar (1 − α^{γ+1}) / (1 − α)). Two, because acceptance
comes in runs: a prompt-lookup match that is right for one token tends to be right for the next
ones, so the later rate is far above the first, and long drafts pay where one α would call them
hopeless. Plain decoding is chosen only if it wins even against the rates' upper confidence bound
(one standard error up): on few judgements a run of early rejections says little, and a
pair that pays must not be left for long stretches of plain decoding on such luck.

The cost is measured, not assumed: the wall time of whole iterations (drafting, the target's
forward over γ + 1 tokens, the acceptance test and every overhead around them) for each γ used, and
a least-squares line cost(γ) = a + b·γ through them for the others. On a CPU verification is not
free and on tiny models every forward is mostly fixed overhead, so the line is what decides. The
choice maximises E(γ) / cost(γ) over [0, max]; γ = 0 is plain decoding. It starts with one draft
and one plain step (two points of the line), then drafts until a few drafts were judged (one early
rejection says little about α), unless the costs alone rule drafting out: where even an accepted
draft would not pay for itself (a forward that costs as much per token fed as a step).

While plain decoding wins, a probe now and then (a draft of the length that loses least) keeps the
rates and costs current. A probe is not free: besides its own iteration, a draft model must first
catch up on every token decided since it last ran (on a backend whose forward cost grows with the
tokens fed, such as MLX on a CPU, that is as dear as having drafted all along). Probes therefore
come ever rarer while they keep losing, and only while what they have cost beyond plain decoding,
plus the next one's estimate (with the drafter's own estimate of its catch-up), stays within
`BUDGET` of the time spent decoding. A drafter that costs nothing to consult (prompt lookup) is
asked anyway during plain decoding, and its shadow draft judged against the tokens chosen, so the
rates follow the text (a reply that starts quoting its prompt) with no probe at all.
"""

from __future__ import annotations

import collections
import statistics

DECAY = 0.95  # weight of the past in the running acceptance counts (per drafting iteration)
PRIOR = 2.0  # pseudo-counts pulling the later positions' acceptance rate towards the first one's
WINDOW = 16  # iteration times kept per draft length; their median is its cost (robust to outliers)
PROBE_FIRST, PROBE_MAX = 8, 256  # iterations between probes while plain decoding wins
BUDGET = 0.03  # probes may cost at most this share of the decoding time beyond plain decoding
PLAIN_EVERY = 16  # while drafting wins, one plain step in this many keeps the baseline's cost current
WARMUP = (1, 0)  # the first iterations: the two cheapest points of the cost line, and a first α
MIN_DRAFTS = 4  # then drafts go on until this many were judged, unless even all-accepted drafts would lose
CLEAR_WIN = 1.2  # ... (or win by less than this factor: measurement noise could fake a smaller win)
OPTIMISM = 1.0  # plain decoding must beat drafting by the acceptance rates' upper bounds (one standard error)
SHRINK = 2.0  # pseudo-samples of the cost line in a measured draft length's cost
SPAN = 3  # the second draft length measured lies this far from the first (the cost line's slope)
RECHECK = 8  # while plain decoding wins and no acceptance was observed, the choice is re-made every this many steps
SEEDED = 4  # the draft length `auto` stands for in seeded sampling (see `for_options`)


class DraftLength:
    def __init__(self, fixed: int | None = None, maximum: int = 8):
        """`fixed` drafts that many every time (None: choose); `maximum` bounds the choice. A fixed
        length above `maximum` raises it: the bound is the choice's, not the user's."""
        maximum = max(maximum, fixed or 0)
        self.fixed, self.maximum = fixed, maximum
        self.reached = [0.0] * (maximum + 1)  # per draft position j ≥ 1: drafts judged (decayed counts)
        self.passed = [0.0] * (maximum + 1)  # ... and accepted
        self.samples: dict[int, collections.deque] = {}  # γ -> recent seconds per iteration
        self._since_probe, self._probe_every = 0, PROBE_FIRST
        self._since_plain = 0
        self._warmup = [g for g in WARMUP if g <= maximum]
        self._elapsed = self._explored = 0.0  # seconds decoding; seconds probes cost beyond plain decoding
        self._probing = False
        self._drafts = 0  # drafting iterations observed
        self._plain_won, self._unchecked = False, 0  # the last full choice: plain decoding; steps since

    @classmethod
    def for_options(cls, num_draft: int | str, maximum: int, seeded_sampling: bool) -> DraftLength:
        """The policy `--num-draft N|auto` asks for. `auto` picks lengths from measured wall times,
        and the length decides how many random numbers a step draws, so a seeded sampling run
        would not repeat itself; there `auto` drafts a fixed `SEEDED` tokens (at most `maximum`),
        and the text is the same on every run (greedy decoding is the same whatever the lengths)."""
        if num_draft != "auto":
            return cls(int(num_draft), maximum)
        return cls(min(SEEDED, maximum), maximum) if seeded_sampling else cls(None, maximum)

    @property
    def alpha(self) -> float:
        """The first draft's acceptance rate."""
        return self._accept_rates()[1] if self.maximum else 0.5

    def _accept_rates(self, optimism: float = 0.0) -> list[float]:
        """h_j for j = 1..max (index 0 unused): the first draft's rate, and one pooled rate for
        every later position (how often a draft goes on being accepted), from the decayed counts,
        each pulled by pseudo-counts towards a prior (0.5; the first draft's rate) so that a few
        judgements do not decide alone. Two numbers, not one per position: the later positions
        are judged rarely, and one rate each would be noise. `optimism`: standard errors added
        to each (an upper confidence bound)."""
        first_n = self.reached[1] + 1
        first = (self.passed[1] + 0.5) / first_n
        later_n = sum(self.reached[2:]) + PRIOR
        later = (sum(self.passed[2:]) + PRIOR * first) / later_n
        first += optimism * (first * (1 - first) / first_n) ** 0.5
        later += optimism * (later * (1 - later) / later_n) ** 0.5
        return [1.0, min(first, 0.999)] + [min(later, 0.999)] * (self.maximum - 1)

    def next(self, catch_up: float = 0.0) -> int:
        """The next draft length; `catch_up`: the drafter's estimate of the seconds it would first
        spend catching up on the tokens decided since it last ran."""
        self._probing = False
        if self.fixed is not None or self.maximum == 0:
            return self.fixed or 0
        if self._warmup:
            return self._warmup.pop(0)
        if self._plain_won and self._unchecked < RECHECK - 1 and self._since_probe + 1 < self._probe_every:
            self._unchecked += 1  # nothing new on acceptance, no probe due: the costs drift too slowly to
            self._since_probe += 1  # change the choice within a few steps (the full choice costs ~50 µs)
            return 0
        self._plain_won, self._unchecked = False, 0
        costs, rates, hopeful = self._costs(), self._accept_rates(), self._accept_rates(OPTIMISM)
        drafting = range(1, self.maximum + 1)
        best = max(drafting, key=lambda g: self._rate(g, costs[g], rates))  # the best draft length (or loser)
        plain_wins = self._rate(0, costs[0], hopeful) >= max(self._rate(g, costs[g], hopeful) for g in drafting)
        if plain_wins and self._drafts < MIN_DRAFTS and self._could_pay(costs):
            return self._second_point(best)  # learn α first
        if not plain_wins:
            self._since_probe, self._probe_every = 0, PROBE_FIRST
            self._since_plain += 1
            if self._since_plain >= PLAIN_EVERY:
                self._since_plain = 0
                return 0
            return self._second_point(best)
        self._since_probe += 1
        if self._since_probe < self._probe_every:
            self._plain_won = True
            return 0
        self._since_probe, self._probe_every = 0, min(2 * self._probe_every, PROBE_MAX)
        expected = self._rate(best, 1.0, rates)  # tokens per verification
        estimate = catch_up + max(costs[best] - costs[0] * expected, 0.0)
        if self._explored + estimate > BUDGET * (self._elapsed + estimate):
            return 0
        self._probing = True
        return self._second_point(best)

    def _second_point(self, gamma: int) -> int:
        """`gamma`, or (while only one draft length was measured and `gamma` lies near it) another
        length: the slope of the cost line comes from two of them (the jump from a plain step to
        any draft is no slope), `SPAN` apart where the bound allows, so that the noise of two
        iteration times does not make the slope (tiny-draft on ONNX: γ 1 and 2 gave twice the
        slope γ 1 and 4 give, and `auto` drafted one or two tokens for half a reply where four
        paid best)."""
        measured = [g for g in self.samples if g > 0]
        if len(measured) == 1 and self.maximum > 1 and abs(gamma - measured[0]) < SPAN:
            first = measured[0]
            if first + SPAN <= self.maximum:
                return first + SPAN
            if first - SPAN >= 1:
                return first - SPAN
            return max((g for g in range(1, self.maximum + 1) if g != first), key=lambda g: (abs(g - first), g))
        return gamma

    def observe(self, drafted: int, accepted: int, seconds: float | None, overhead: float = 0.0) -> None:
        """One iteration: tokens drafted (0: a plain step) and accepted, its steady-state wall time
        (None when it cannot stand for the steady state) and the drafter's one-off `overhead`."""
        if seconds is not None:
            self.samples.setdefault(drafted, collections.deque(maxlen=WINDOW)).append(seconds)
            self._elapsed += seconds + overhead
            if self._probing:
                self._explored += seconds + overhead - self._costs()[0] * (accepted + 1)
        self.observe_acceptance(drafted, accepted)

    def observe_acceptance(self, drafted: int, accepted: int) -> None:
        """Acceptance alone: also a shadow draft's, judged against the tokens plain decoding chose
        (for a one-hot draft, the chance that the target picks its token is the chance it is accepted)."""
        if not drafted:
            return
        self._drafts += 1
        self._plain_won = False  # re-make the choice at the next step
        for j in range(1, self.maximum + 1):
            self.reached[j] *= DECAY
            self.passed[j] *= DECAY
        for j in range(1, min(accepted + 1, drafted) + 1):  # judged: the accepted and the first rejected
            self.reached[j] += 1
            self.passed[j] += j <= accepted

    def _could_pay(self, costs: list[float]) -> bool:
        """Would some draft length clearly beat plain decoding if every draft were accepted?"""
        plain = 1 / max(costs[0], 1e-9)
        return any((g + 1) / max(costs[g], 1e-9) > CLEAR_WIN * plain for g in range(1, self.maximum + 1))

    def _rate(self, gamma: int, cost: float, rates: list[float]) -> float:
        """Expected tokens per second with drafts of `gamma`, at acceptance `rates` (h_j)."""
        expected, survive = 1.0, 1.0
        for j in range(1, gamma + 1):
            survive *= rates[j]
            expected += survive
        return expected / max(cost, 1e-9)

    def _costs(self) -> list[float]:
        """Seconds per iteration for γ = 0..max: a least-squares line (slope ≥ 0, each draft
        length weighted by its samples) through the measured draft lengths, a measured length's
        own median pulled towards it by `SHRINK` pseudo-samples (one slow iteration must not price
        a length out for good: it is never measured again if it looks dear). A plain step is no
        point of that line, and keeps its own median: drafting and a multi-token verification
        carry a fixed cost of their own. While one draft length alone was measured, the line runs
        through it and the plain step (every extra second is taken to grow with γ: the cautious
        guess)."""
        measured = {g: statistics.median(times) for g, times in self.samples.items()}
        counts = {g: len(times) for g, times in self.samples.items()}
        drafts = sorted((g, c) for g, c in measured.items() if g > 0)
        plain = measured.get(0)
        if len(drafts) >= 2:
            ws = [counts[g] for g, _ in drafts]
            mx = sum(w * g for w, (g, _) in zip(ws, drafts)) / sum(ws)
            my = sum(w * c for w, (_, c) in zip(ws, drafts)) / sum(ws)
            spread = sum(w * (g - mx) ** 2 for w, (g, _) in zip(ws, drafts))
            slope = max(sum(w * (g - mx) * (c - my) for w, (g, c) in zip(ws, drafts)) / max(spread, 1e-12), 0.0)
            line = (my - slope * mx, slope)
        elif drafts and plain is not None:
            (g, c), = drafts
            line = (plain, max(c - plain, 0.0) / g)
        elif drafts or plain is not None:
            g, c = drafts[0] if drafts else (0, plain)
            line = (c * (1 - 0.5 * g), 0.5 * c)
        else:
            line = (1.0, 0.5)  # nothing measured yet: drafting costs something
        floor = min(measured.values(), default=0.0)
        out = [max(line[0] + line[1] * g, floor) for g in range(self.maximum + 1)]
        for g, c in measured.items():
            out[g] = c if g == 0 or len(drafts) < 2 else (counts[g] * c + SHRINK * out[g]) / (counts[g] + SHRINK)
        return out
