"""Block-diffusion decoding: parallel commits of masked tokens, block by block.

Block-causal models (SDAR, Fast-dLLM v2, BD3-LM). Blocks are aligned to position 0. The prompt's
whole blocks go into an append-only KV cache (one forward, block ids as the mask); the block being
decoded (the prompt's tail, then masks) is scored against the cache without being kept
(`commit=False`), bidirectionally inside the block; a commit rule fixes some masks after each
forward; a finished block's keys and values are appended exactly once, fused into the next block's
first forward where the model allows. Every query sees exactly what it would see with no cache, so
cached decoding gives the tokens uncached decoding gives (`cache="none"` is that reference).

Bidirectional models (LLaDA, Dream) see the whole canvas (prompt + all masks) and decode it in
semi-autoregressive blocks after the prompt. `cache="none"` runs the whole canvas every step (exact);
"prefix" keeps the keys and values left of the block from a full forward at the block start, and
"dual" keeps every position's (the block's stale ones hidden and re-run): both are approximations,
refreshed at each block start and every `refresh_every` forwards.

Shifted models (Dream, Fast-dLLM v2) read position p's prediction from row p − 1; Fast-dLLM v2 also
decodes each block's first token from that row at once (its "AR first token").
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Sequence

import numpy as np

from edgegen.core.diffusion import DiffusionSpec
from edgegen.core.errors import ConfigError
from edgegen.core.protocols import Capability, Feed, require
from edgegen.core.stats import GenerationStats
from edgegen.decoding import commit_rules
from edgegen.decoding.autoregressive import Emitter, Session, check_prompt
from edgegen.decoding.sampling import Sampler

CACHES = {"block": ("block", "none"), "full": ("dual", "prefix", "none")}
THRESHOLD_RULES = ("threshold", "dynamic")  # the rules that read --threshold (commit_rules.choose)
STEPS_RULES = ("fixed", "dynamic", "origin", "maskgit_plus", "topk_margin", "entropy")  # and --steps


@dataclasses.dataclass(frozen=True)
class Plan:
    """A diffusion spec with the user's choices applied."""

    spec: DiffusionSpec
    block_size: int
    rules: commit_rules.RuleSettings
    cache: str
    refresh_every: int = 0
    fuse_commit: bool = True

    @property
    def mask(self) -> int:
        return int(self.spec.mask_token_id)


def plan(spec: DiffusionSpec, *, block_size: int | None = None, rule: str | None = None,
         threshold: float | None = None, steps: int | None = None, cache: str | None = None,
         refresh_every: int = 0, **rule_options) -> Plan:
    """Defaults from the model's family; checked here, before anything runs."""
    size = block_size or spec.block_size
    if size < 1:
        raise ConfigError("--block-size must be at least 1")
    cache = cache or spec.cache
    if cache not in CACHES[spec.attention]:
        kind = "block-causal" if spec.attention == "block" else "bidirectional"
        raise ConfigError(f"--dllm-cache {cache!r} does not apply to a {kind} model; choose "
                          f"{' or '.join(CACHES[spec.attention])}")
    if refresh_every and cache not in ("dual", "prefix"):
        raise ConfigError(f"--refresh-every refreshes a bidirectional model's dual or prefix cache; the cache here "
                          f"is {cache!r}: drop it")
    chosen = rule or spec.rule
    if threshold is not None and chosen not in THRESHOLD_RULES:
        raise ConfigError(f"--threshold applies to the {' and '.join(THRESHOLD_RULES)} rules, not to {chosen!r}: "
                          "drop it or choose one of those with --rule")
    if steps is not None and chosen not in STEPS_RULES:
        raise ConfigError(f"--steps spreads the {', '.join(STEPS_RULES)} rules' commits over a block, not "
                          f"{chosen!r}'s: drop it or choose one of those with --rule")
    settings = commit_rules.RuleSettings(chosen, spec.threshold if threshold is None else threshold,
                                         steps=steps or size, **rule_options)
    return Plan(spec, size, settings, cache, refresh_every)


class _Canvas:
    """Token ids being decoded, masks included, with the generated region's bookkeeping."""

    def __init__(self, prompt: Sequence[int], length: int, mask: int):
        self.ids = list(prompt) + [mask] * (length - len(prompt))
        self.start, self.mask = len(prompt), mask
        self.emitted = len(prompt)  # positions already handed to the caller

    def masked(self, lo: int, hi: int) -> list[int]:
        return [p for p in range(lo, hi) if self.ids[p] == self.mask]

    def ready(self) -> list[int]:
        """Newly final tokens: the run of decided positions after those already handed out."""
        out = []
        while self.emitted < len(self.ids) and self.ids[self.emitted] != self.mask:
            out.append(self.ids[self.emitted])
            self.emitted += 1
        return out


class BlockDiffusion:
    NEEDS = Capability.LOGITS | Capability.MULTI_TOKEN | Capability.SCORE_ONLY | Capability.BLOCK_ATTENTION

    def __init__(self, session: Session, plan: Plan, sampler: Sampler, stats: GenerationStats):
        needs = self.NEEDS | (Capability.POSITIONS if plan.cache == "dual" else Capability.NONE)
        require(session.model, needs, "block-diffusion decoding")
        self.session, self.plan, self.sampler, self.stats = session, plan, sampler, stats
        self.rng = np.random.default_rng(sampler.params.seed)
        self.shift = plan.spec.shift
        self.pending: tuple[int, int] | None = None  # a finished block whose commit rides on the next forward

    # ------------------------------------------------------------------ the loop
    def generate(self, prompt: Sequence[int], out: Emitter, max_tokens: int) -> Iterator[int]:
        B = self.plan.block_size
        first = len(prompt) // B * B if self.plan.spec.attention == "block" else len(prompt)
        end = first + -(-(len(prompt) + max_tokens - first) // B) * B  # whole blocks cover max_tokens
        end = min(end, self.session.model.context_length)
        canvas = _Canvas(prompt, end, self.plan.mask)
        carry = self._start(canvas, first)
        for lo in range(first, end, B):
            hi = min(lo + B, end)
            for token in self._block(canvas, lo, hi, carry):
                if not out.accept(token):
                    return
                yield token
                if out.done():
                    return
            carry = self._finish(canvas, lo, hi)

    def _start(self, canvas: _Canvas, first: int) -> np.ndarray | None:
        """Block-causal with a cache: the prompt's whole blocks into the cache (reusing what the
        session already holds at block boundaries); returns the last committed row (the carry)."""
        session, B = self.session, self.plan.block_size
        if self.plan.spec.attention != "block" or first == 0:
            session.reset()
            return None
        if self.plan.cache == "none":
            return self._uncached_carry(canvas, first) if self.plan.spec.ar_first_token else None
        shared = 0
        while shared < first and shared < len(session.tokens) and session.tokens[shared] == canvas.ids[shared]:
            shared += 1
        keep = shared // B * B
        if self.shift:
            keep = min(keep, first - B)  # at least one block to run, for its last row (the carry)
        session.rewind(keep)
        self.stats.prompt_tokens = canvas.start - keep  # the partial block's run with its first denoising step
        if keep == first:  # the whole prompt's blocks are already in the cache
            return None
        ids = canvas.ids[keep:first]
        rows = session.run(Feed(ids, blocks=[(keep + i) // B for i in range(len(ids))], rows=1))
        return rows[-1]

    def _block(self, canvas: _Canvas, lo: int, hi: int, carry: np.ndarray | None) -> Iterator[int]:
        """Denoise [lo, hi) until no mask is left; yields tokens as they become final in order."""
        spec, rules = self.plan.spec, self.plan.rules
        if spec.ar_first_token and carry is not None and canvas.ids[lo] == canvas.mask:
            canvas.ids[lo] = self._decide(carry[None], [lo], canvas)[0]
        yield from canvas.ready()
        masked_at_start, index = len(canvas.masked(lo, hi)), 0
        sub = spec.sub_block if spec.sub_block else hi - lo
        while canvas.masked(lo, hi):
            rows = self._score(canvas, lo, hi, carry, index)  # (hi - lo, vocab): position p's prediction
            sub_lo = lo + (canvas.masked(lo, hi)[0] - lo) // sub * sub
            candidates = canvas.masked(sub_lo, min(sub_lo + sub, hi))
            logits = rows[[p - lo for p in candidates]]
            logits[:, canvas.mask] = -np.inf  # never propose the mask itself
            tokens, probs = commit_rules.propose(logits, self.sampler, canvas.ids[:lo])
            step = commit_rules.Step(logits, index, masked_at_start)
            for i in commit_rules.choose(rules, step, tokens, probs, self.rng):
                canvas.ids[candidates[i]] = int(tokens[i])
            index += 1
            yield from canvas.ready()

    def _decide(self, logits: np.ndarray, positions: list[int], canvas: _Canvas) -> list[int]:
        logits = np.array(logits, dtype=np.float64)
        logits[:, canvas.mask] = -np.inf
        return [int(t) for t in commit_rules.propose(logits, self.sampler, canvas.ids[: positions[0]])[0]]

    # ------------------------------------------------------------------ forwards
    def _score(self, canvas: _Canvas, lo: int, hi: int, carry: np.ndarray | None, index: int) -> np.ndarray:
        """Logits predicting each position of [lo, hi), from one forward pass. Shifted models read
        position p from row p − 1: the scorers return rows [lo − 1, hi) for them, [lo, hi) else."""
        self.stats.forwards += 1
        head = lo - 1 if self.shift else lo
        if self.plan.spec.attention == "block":
            rows = self._score_block_causal(canvas, lo, hi, head, carry)
        else:
            rows = self._score_bidirectional(canvas, lo, hi, head, index)
        return rows[:-1] if self.shift else rows

    def _score_block_causal(self, canvas: _Canvas, lo: int, hi: int, head: int,
                            carry: np.ndarray | None) -> np.ndarray:
        B, session = self.plan.block_size, self.session
        if self.plan.cache == "none":  # the exact reference: everything, block ids as the mask
            session.reset()
            rows = session.run(Feed(canvas.ids[:hi], blocks=[p // B for p in range(hi)], commit=False,
                                    rows=(max(head, 0), hi)))
        elif self.pending is not None:  # fused: the finished block is committed by this same forward
            prev = canvas.ids[self.pending[0]:self.pending[1]]
            block = canvas.ids[lo:hi]
            kept = session.cache.length + len(prev)
            rows = session.run(Feed(prev + block, blocks=[0] * len(prev) + [1] * len(block),
                                    rows=(len(prev) - (lo - head), len(prev) + len(block))))
            session.rewind(kept)  # keep the finished block's keys and values, not this one's
            self.pending = None
        else:
            block = canvas.ids[lo:hi]
            rows = session.run(Feed(block, blocks=[0] * len(block), commit=False))
            if head < lo and carry is not None:  # row lo − 1 ended the previous block: its carry
                rows = np.concatenate([carry[None], rows])
        if head < lo and len(rows) == hi - lo:  # position 0 has no row before it (and is never masked)
            rows = np.concatenate([np.zeros_like(rows[:1]), rows])
        return rows

    def _score_bidirectional(self, canvas: _Canvas, lo: int, hi: int, head: int, index: int) -> np.ndarray:
        session, cache, n = self.session, self.plan.cache, len(canvas.ids)
        refresh = index == 0 or (self.plan.refresh_every and index % self.plan.refresh_every == 0)
        if cache == "none" or refresh:
            session.reset()
            rows = session.run(Feed(canvas.ids, blocks=[0] * n, commit=cache != "none", rows=(head, hi)))
            if cache == "prefix":
                session.rewind(head)
            return rows
        if cache == "prefix":  # cache = [0, head); run the rest of the canvas
            return session.run(Feed(canvas.ids[head:], blocks=[0] * (n - head), commit=False, rows=(0, hi - head)))
        return session.run(Feed(canvas.ids[head:hi], positions=list(range(head, hi)), blocks=[0] * (hi - head),
                                hidden=(head, hi), commit=False))

    def _finish(self, canvas: _Canvas, lo: int, hi: int) -> np.ndarray | None:
        """A finished block-causal block's keys and values go into the cache once: fused into the
        next block's first forward, or (when the next block needs the carry first: Fast-dLLM v2's
        AR first token) by a forward of its own, whose last row is the carry."""
        if self.plan.spec.attention != "block":
            return None
        if self.plan.cache == "none":
            return self._uncached_carry(canvas, hi) if self.plan.spec.ar_first_token else None
        if self.plan.fuse_commit and not self.plan.spec.ar_first_token:
            self.pending = (lo, hi)
            return None
        self.stats.forwards += 1
        block = canvas.ids[lo:hi]
        return self.session.run(Feed(block, blocks=[0] * len(block), rows=1))[-1]


    def _uncached_carry(self, canvas: _Canvas, hi: int) -> np.ndarray:
        """The last row before `hi`, computed from scratch (the uncached reference's carry)."""
        self.stats.forwards += 1
        self.session.reset()
        B = self.plan.block_size
        return self.session.run(Feed(canvas.ids[:hi], blocks=[p // B for p in range(hi)], commit=False,
                                     rows=(hi - 1, hi)))[-1]


def generate(session: Session, prompt: Sequence[int], sampler: Sampler, plan: Plan, *, max_tokens: int,
             stop_ids: Sequence[int] = (), stats: GenerationStats | None = None,
             should_stop: Callable[[list[int]], bool] | None = None) -> Iterator[int]:
    """Yield up to `max_tokens` tokens after `prompt`, decoded by block diffusion. Stops at a stop id
    (EOS) with no mask before it, or at a stop string."""
    stats = stats if stats is not None else GenerationStats()
    stats.strategy = "block-diffusion"
    max_tokens = check_prompt(prompt, session.model.context_length, max_tokens)
    out = Emitter(prompt, stats, max_tokens=max_tokens, stop_ids=stop_ids, should_stop=should_stop)
    stats.prompt_tokens = len(prompt)  # the cached path leaves out the blocks it reused
    engine = BlockDiffusion(session, plan, sampler, stats)
    yield from engine.generate(list(prompt), out, max_tokens)
