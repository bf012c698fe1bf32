"""Superposed Decoding (Shen et al. 2024): k completion drafts from one autoregressive pass.

One KV cache holds the prompt; each step feeds one input: the superposition Σ_x w_x E[x] of the
drafts' last-token embeddings, weighted by the drafts' normalised probabilities (drafts sharing a
last token add up). The model's next-token distribution (temperature `temperature`, cut to its top
`sample` tokens and renormalised) is shared by every draft; each draft scores each of those tokens
as

    score += (1 − α) · log p_LLM(x) + α · log Σ_i w_i · P_{i+1}(x | the draft's last i tokens)

with an n-gram store (orders 2-6, weights w_i; a geometric mixture: no n-gram support is −∞, and a
draft with no support at all falls back to its LLM score minus a penalty). The best 2k candidates
are split: those ending in EOS finish, the best k others become the new drafts. With k = 1 and
α = 0 this is greedy decoding, token for token. It is not lossless and not an accelerator of one
answer: it offers k different completions for the price of one pass (autocomplete).

Under an output constraint (a JSON schema, regex or grammar) each draft masks the shared logits
with what its grammar state allows before taking its own top tokens, so every draft stays in the
grammar and a draft ends (EOS) only where the grammar may.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Iterator, Sequence

import numpy as np

from edgegen.core.errors import ConfigError
from edgegen.core.protocols import Capability, Feed, TokenConstraint, require
from edgegen.core.stats import GenerationStats
from edgegen.decoding.autoregressive import Session, check_prompt
from edgegen.decoding.ngram import NgramStore

NGRAM_WEIGHTS = (0.01, 0.04, 0.15, 0.18, 0.12)  # contexts of 1..5 tokens (orders 2..6), as released
DEFAULT_ALPHA = {1: 0.54, 2: 0.62, 3: 0.54, 4: 0.52, 5: 0.60}  # the released per-k n-gram weights
PENALTY = 200.0


@dataclasses.dataclass(frozen=True)
class SuperposedSettings:
    drafts: int = 3
    ngram_weight: float | None = None  # α; None: the released value for this k (0 without a store)
    temperature: float = 0.06
    sample: int | None = None  # LLM tokens each draft may extend with (default 3k)

    def alpha(self, has_store: bool) -> float:
        if not has_store:
            return 0.0
        return DEFAULT_ALPHA.get(self.drafts, 0.54) if self.ngram_weight is None else self.ngram_weight


@dataclasses.dataclass
class Draft:
    tokens: list[int]
    score: float  # the summed mixed log-score of its tokens
    finished: bool = False  # ended with a stop id (not included in `tokens`)

    @property
    def perplexity(self) -> float:
        """exp(−score / length): the paper's ranking of drafts (lower is better)."""
        return math.exp(-self.score / max(len(self.tokens) + self.finished, 1))


@dataclasses.dataclass
class Trace:
    """What each step offered, so a draft's score can be recomputed: step -> {token: log p_LLM}
    (empty under a constraint, where each draft is offered its own tokens)."""

    llm_logprobs: list[dict[int, float]] = dataclasses.field(default_factory=list)
    alpha: float = 0.0


class Superposed:
    NEEDS = Capability.LOGITS | Capability.EMBEDDINGS | Capability.ROLLBACK

    def __init__(self, session: Session, settings: SuperposedSettings, store: NgramStore | None,
                 stop_ids: Sequence[int] = (), constraint: TokenConstraint | None = None):
        require(session.model, self.NEEDS, "superposed decoding")
        if settings.drafts < 1:
            raise ConfigError("--drafts must be at least 1")
        self.session, self.settings, self.store = session, settings, store
        self.k, self.stop = settings.drafts, set(stop_ids)
        self.sample = settings.sample or 3 * self.k
        self.alpha = settings.alpha(store is not None)
        self.trace = Trace(alpha=self.alpha)
        self.constraint = constraint

    def run(self, prompt: Sequence[int], max_tokens: int, stats: GenerationStats) -> Iterator[list[Draft]]:
        """Yield the drafts (alive and finished, best first) after every step."""
        stats.strategy = "superposed"
        max_tokens = check_prompt(prompt, self.session.model.context_length, max_tokens)
        self.session.model.embed(list(prompt[-1:]))  # a table opened on first use (ONNX) is not decode time
        t0 = time.perf_counter()
        logits, stats.prompt_tokens = self.session.prefill(list(prompt))
        stats.prefill_seconds = time.perf_counter() - t0
        base = len(prompt)
        alive, finished = [Draft([], 0.0)], []
        try:
            for step in range(max_tokens):
                alive, done = self._step(prompt, logits, alive)
                finished = _best(finished + done, self.k)
                stats.forwards += 1
                stats.generated_tokens = step + 1
                stats.decode_seconds = time.perf_counter() - t0 - stats.prefill_seconds
                yield _best(alive + finished, self.k)
                if not alive or step + 1 == max_tokens:
                    stats.finish_reason = "stop" if not alive else "length"
                    return
                logits = self.session.model.forward(Feed(embeddings=self._superpose(alive)), self.session.cache)[-1]
        finally:
            self.session.rewind(base)  # the superposed entries go; the prompt stays for the next call

    def _step(self, prompt: Sequence[int], logits: np.ndarray, alive: list[Draft]) -> tuple[list[Draft], list[Draft]]:
        offers = self._offers(prompt, logits, alive)  # per draft: (tokens, log p_LLM)
        scores = np.concatenate([d.score + self._mixed(list(prompt) + d.tokens, tokens, logp)
                                 for d, (tokens, logp) in zip(alive, offers)])  # (k·n,) draft-major
        owner = np.concatenate([np.full(len(tokens), i) for i, (tokens, _) in enumerate(offers)])
        offered = np.concatenate([tokens for tokens, _ in offers])
        order = np.argsort(-scores, kind="stable")[: 2 * self.k]
        new_alive, done = [], []
        for flat in order:
            d = int(owner[flat])
            score = float(scores[flat])
            if not math.isfinite(score):
                continue
            token = int(offered[flat])
            if token in self.stop:
                done.append(Draft(alive[d].tokens, score, finished=True))
            elif len(new_alive) < self.k:
                new_alive.append(Draft(alive[d].tokens + [token], score))
        return new_alive, done

    def _offers(self, prompt: Sequence[int], logits: np.ndarray,
                alive: list[Draft]) -> list[tuple[np.ndarray, np.ndarray]]:
        """The tokens each draft may extend with: the shared top tokens, or under a constraint the
        top tokens of what the draft's grammar state allows."""
        if self.constraint is None:
            tokens, logp = _top_logprobs(logits, self.settings.temperature, self.sample)
            self.trace.llm_logprobs.append(dict(zip(tokens.tolist(), logp.tolist())))
            return [(tokens, logp)] * len(alive)
        self.trace.llm_logprobs.append({})
        offers = []
        for d in alive:
            allowed = self.constraint.allowed(list(prompt) + d.tokens)
            masked = np.where(allowed[: logits.shape[-1]], logits, -np.inf)
            tokens, logp = _top_logprobs(masked, self.settings.temperature, max(1, min(self.sample, int(allowed.sum()))))
            offers.append((tokens, logp))
        return offers

    def _mixed(self, context: list[int], tokens: np.ndarray, logp: np.ndarray) -> np.ndarray:
        """(1 − α) log p_LLM + α log P_ngram for each candidate token, in this draft's context."""
        if self.alpha == 0:
            return logp
        ngram = ngram_mixture(self.store, context, tokens)
        with np.errstate(divide="ignore"):
            mixed = (1 - self.alpha) * logp + self.alpha * np.log(ngram)
        # Tokens no n-gram knows keep the LLM's score, penalised: they rank below every known one,
        # and still fill the k drafts where the store knows fewer continuations than that.
        return np.where(np.isfinite(mixed), mixed, (1 - self.alpha) * logp - PENALTY)

    def _superpose(self, alive: list[Draft]) -> np.ndarray:
        """(1, hidden): Σ_x w_x E[x], w the drafts' softmaxed scores summed per last token."""
        scores = np.array([d.score for d in alive])
        gamma = np.exp(scores - scores.max())
        gamma /= gamma.sum()
        last = np.array([d.tokens[-1] for d in alive])
        uniq, where = np.unique(last, return_inverse=True)
        weights = np.bincount(where, weights=gamma)
        return (weights[:, None] * self.session.model.embed(uniq.tolist())).sum(0, keepdims=True).astype(np.float32)


def ngram_mixture(store: NgramStore, context: Sequence[int], tokens: np.ndarray) -> np.ndarray:
    """Σ_i w_i P_{i+1}(token | last i tokens of context) over the orders the context is long enough for."""
    total = np.zeros(len(tokens))
    for i, weight in enumerate(NGRAM_WEIGHTS, start=1):
        if len(context) >= i:
            total += weight * store.probs(context, tokens, i + 1)
    return total


def _top_logprobs(logits: np.ndarray, temperature: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The n most likely tokens and their log-probabilities, renormalised over those n."""
    z = np.asarray(logits, dtype=np.float64) / max(temperature, 1e-6)
    n = min(n, z.size)
    top = np.argpartition(-z, n - 1)[:n]
    top = top[np.argsort(-z[top], kind="stable")]
    sel = z[top] - z[top].max()
    return top, sel - math.log(np.exp(sel).sum())


def _best(drafts: list[Draft], k: int) -> list[Draft]:
    """The k best distinct drafts by the paper's criterion (perplexity of their own score)."""
    seen, out = set(), []
    for d in sorted(drafts, key=lambda d: d.perplexity):
        key = (tuple(d.tokens), d.finished)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out[:k]
