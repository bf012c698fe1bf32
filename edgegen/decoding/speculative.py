"""Speculative decoding: a drafter proposes γ tokens, the target scores all γ+1 positions in one
forward pass, and the speculative sampling rule keeps the output distribution exactly the
target's (Leviathan et al. 2023; Chen et al. 2023):

    accept x_i with probability min(1, p_i(x_i) / q_i(x_i)); at the first rejection sample from
    norm(max(0, p_i − q_i)); when all γ pass, sample a bonus token from p_{γ+1}.

p and q are the *processed* distributions (repetition penalty, temperature, top-k, top-p, min-p
applied to both with the same history), so the guarantee holds for every sampling setting; at
temperature 0 both are one-hot and the output is the target's greedy output token for token.
Deterministic drafts (prompt lookup) have q one-hot: the same rule, accepted with probability p(x).

The target's cache holds the history but its last token; each iteration feeds that token plus the
drafts, so one forward both catches up and verifies. γ = 0 is plain decoding.
"""

from __future__ import annotations

import time
from typing import Callable, Iterator, Sequence

import numpy as np

from edgegen.core.protocols import Capability, require
from edgegen.core.stats import GenerationStats
from edgegen.decoding.autoregressive import Emitter, Session, check_prompt
from edgegen.decoding.draft_length import DraftLength
from edgegen.decoding.drafters import Drafter, Proposal
from edgegen.decoding.sampling import Sampler

NEEDS = Capability.LOGITS | Capability.MULTI_TOKEN | Capability.ROLLBACK


def generate(session: Session, drafter: Drafter, prompt: Sequence[int], sampler: Sampler, *, max_tokens: int,
             draft_length: DraftLength, stop_ids: Sequence[int] = (), stats: GenerationStats | None = None,
             should_stop: Callable[[list[int]], bool] | None = None) -> Iterator[int]:
    """Yield up to `max_tokens` new token ids after `prompt`, as `autoregressive.generate` does."""
    require(session.model, NEEDS, "speculative decoding")
    stats = stats if stats is not None else GenerationStats()
    stats.strategy = "speculative"
    context = session.model.context_length
    max_tokens = check_prompt(prompt, context, max_tokens)
    out = Emitter(prompt, stats, max_tokens=max_tokens, stop_ids=stop_ids, should_stop=should_stop)
    logits, stats.prompt_tokens = session.prefill(list(prompt))
    stats.forwards = 1
    if draft_length.fixed != 0:
        drafter.prepare(prompt)  # the draft's prefill belongs to the time to first token
    pending = [sampler(logits, out.history)]  # tokens decided but not yet yielded
    verifications, skipped = 0, 0  # skipped: tokens decided since the drafter last ran
    shadow: Shadow | None = None
    while True:
        for i, token in enumerate(pending):
            if not out.accept(token):
                if i == 0:  # the forward that decided only the stop id yielded nothing: plain
                    stats.forwards -= 1  # decoding does not count it either
                return
            yield token
            if out.done():
                return
        # The cache holds history[:-1]; drafts may not run past the context or max_tokens.
        room = min(out.room, context - len(out.history)) - 1
        shadow = shadow.judge(out.history, draft_length) if shadow else None
        gamma = min(draft_length.next(drafter.catch_up_seconds(skipped)), max(room, 0))
        if gamma and shadow:
            shadow = shadow.close(out.history, draft_length)
        elif not gamma and drafter.free and shadow is None and draft_length.fixed is None:
            shadow = Shadow.of(drafter.propose(out.history, draft_length.maximum, sampler), len(out.history))
        t0 = time.perf_counter()
        proposal = drafter.propose(out.history, gamma, sampler) if gamma else Proposal([], None)
        pending, accepted = _verify(session, out.history, proposal, sampler, stats)
        seconds = time.perf_counter() - t0 - proposal.overhead
        draft_length.observe(len(proposal.tokens), accepted, seconds, proposal.overhead)  # the length drafted
        skipped = 0 if proposal.tokens else skipped + len(pending)
        verifications += 1 if proposal.tokens else 0
        stats.draft_length = stats.drafted / verifications if verifications else 0.0


class Shadow:
    """A free drafter's draft during plain decoding, judged against the tokens plain decoding picks:
    with one-hot drafts, the target picking a drafted token is exactly as likely as its acceptance."""

    def __init__(self, tokens: list[int], start: int):
        self.tokens, self.start = tokens, start

    @classmethod
    def of(cls, proposal: Proposal, start: int) -> Shadow | None:
        return cls(proposal.tokens, start) if proposal.tokens else None

    def judge(self, history: list[int], draft_length: DraftLength) -> Shadow | None:
        """Report it once its first mismatch or its last token was decided; until then keep it."""
        decided = history[self.start:self.start + len(self.tokens)]
        same = next((i for i, (a, b) in enumerate(zip(decided, self.tokens)) if a != b), len(decided))
        if same < len(decided) or len(decided) == len(self.tokens):
            draft_length.observe_acceptance(len(self.tokens), same)
            return None
        return self

    def close(self, history: list[int], draft_length: DraftLength) -> None:
        """Drafting resumes: what was decided so far all matched; count those positions as passed."""
        same = len(history) - self.start
        draft_length.observe_acceptance(same, same)
        return None


def _verify(session: Session, history: list[int], proposal: Proposal, sampler: Sampler,
            stats: GenerationStats) -> tuple[list[int], int]:
    """One target forward over [last token, drafts]: the tokens it decides (accepted drafts and one
    more) and how many drafts were accepted; the cache is rolled back to the accepted prefix."""
    vocab = session.model.vocab_size
    cut = next((i for i, t in enumerate(proposal.tokens) if not 0 <= t < vocab), len(proposal.tokens))
    judged = cut + 1
    if sampler.constraint is not None and cut:  # drafts past the grammar have p = 0: never verify them
        fits = sampler.constraint.valid_prefix(history, proposal.tokens[:cut])
        cut, judged = min(cut, fits), min(judged, fits)
    drafts = proposal.tokens[:cut]  # a larger draft vocabulary may propose ids the target lacks (p = 0)
    base = len(history) - 1
    rows = session.feed([history[-1], *drafts], last_only=False)  # (γ + 1, vocab)
    stats.forwards += 1
    # The first id the target lacks (if any) is judged too: p = 0 there, so it is rejected and the
    # next token comes from the residual, from the row the fed prefix already gives.
    accepted, extra = _accept(rows, proposal.tokens[:judged], proposal.probs, history, sampler)
    session.rewind(base + 1 + accepted)  # keep the last token and the accepted drafts
    stats.drafted += len(drafts)
    stats.accepted += accepted
    return drafts[:accepted] + [extra], accepted


def _accept(rows: np.ndarray, drafts: list[int], q: list[np.ndarray] | None, history: list[int],
            sampler: Sampler) -> tuple[int, int]:
    """(number of drafts accepted, the token that follows them). `rows` has one row per draft plus
    one, except when the last draft is an id the target lacks, which is always rejected."""
    context = list(history)
    greedy = sampler.params.greedy
    for i, x in enumerate(drafts):
        if greedy:  # p is one-hot on the processed argmax; a one-hot or deterministic q changes nothing
            target = sampler(rows[i], context)
            if target != x:
                return i, target
        else:
            p = sampler.probs(rows[i], context)
            qi = None if q is None else _pad(q[i], p.size)
            qx = 1.0 if q is None else q[i][x]  # x may lie past the target's vocabulary
            px = p[x] if x < p.size else 0.0
            if sampler.rng.random() * qx >= px:  # rejected: accept iff r <= p/q
                extra = _sample(_residual(p, qi, x), sampler)
                sampler.record(rows[i], context, extra)
                return i, extra
            sampler.record(rows[i], context, x)
        context.append(x)
    return len(drafts), sampler(rows[len(drafts)], context)


def _residual(p: np.ndarray, q: np.ndarray | None, x: int) -> np.ndarray:
    """norm(max(0, p − q)); for a deterministic draft q is one-hot on x."""
    if q is None:
        q = np.zeros_like(p)
        q[x] = 1.0
    r = np.maximum(p - q, 0.0)
    total = r.sum()
    return r / total if total > 1e-12 else p


def _pad(q: np.ndarray, size: int) -> np.ndarray:
    """Draft and target vocabularies may differ in size over the same tokenizer: pad with zeros."""
    if q.size == size:
        return q
    out = np.zeros(size, dtype=q.dtype)
    out[: min(size, q.size)] = q[:size]
    return out


def _sample(probs: np.ndarray, sampler: Sampler) -> int:
    return int(sampler.rng.choice(probs.size, p=probs))
