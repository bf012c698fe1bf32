"""Plain autoregressive decoding over any `LanguageModel`, with prefix reuse across calls."""

from __future__ import annotations

import time
from typing import Callable, Iterator, Sequence

from edgegen.core.errors import ContextOverflow
from edgegen.core.protocols import LanguageModel
from edgegen.core.stats import GenerationStats
from edgegen.decoding.sampling import Sampler

PREFILL_CHUNK = 512  # bounds the activation memory of long prompts


class Session:
    """A model, its KV cache and the tokens the cache holds; reuses the longest shared prefix."""

    def __init__(self, model: LanguageModel):
        self.model = model
        self.cache = model.new_cache()
        self.tokens: list[int] = []

    def reset(self) -> None:
        self.rewind(0)

    def rewind(self, length: int) -> None:
        self.cache.truncate(length)
        del self.tokens[length:]

    def feed(self, tokens: Sequence[int], *, last_only: bool = True):
        """Run `tokens` after what the cache holds; returns their logits (or the last one's)."""
        if self.cache.length + len(tokens) > self.model.context_length:
            raise ContextOverflow(
                f"{self.cache.length + len(tokens)} tokens do not fit the context of "
                f"{self.model.context_length}; shorten the prompt or /reset the conversation")
        logits = self.model.forward(tokens, self.cache, last_only=last_only)
        self.tokens.extend(tokens)
        return logits

    def prefill(self, prompt: Sequence[int]) -> tuple[object, int]:
        """Make the cache hold `prompt`; returns the logits after its last token and how many
        tokens had to be run (the rest was a cached prefix)."""
        if not prompt:
            raise ContextOverflow("the prompt is empty: give at least one token")
        shared = _common_prefix(self.tokens, prompt)
        self.rewind(min(shared, len(prompt) - 1))  # at least one token to run for fresh logits
        rest = prompt[len(self.tokens):]
        for start in range(0, len(rest), PREFILL_CHUNK):
            logits = self.feed(rest[start:start + PREFILL_CHUNK])
        return logits[-1], len(rest)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def generate(session: Session, prompt: Sequence[int], sampler: Sampler, *, max_tokens: int,
             stop_ids: Sequence[int] = (), stats: GenerationStats | None = None,
             should_stop: Callable[[list[int]], bool] | None = None) -> Iterator[int]:
    """Yield up to `max_tokens` new token ids after `prompt`. A stop id ends generation and is not
    yielded; `should_stop(generated)` may end it after any token (stop strings)."""
    stats = stats if stats is not None else GenerationStats()
    context = session.model.context_length
    if len(prompt) >= context:
        raise ContextOverflow(f"the prompt has {len(prompt)} tokens but the context holds {context}; "
                              "shorten it")
    max_tokens = min(max_tokens, context - len(prompt))
    t0 = time.perf_counter()
    logits, stats.prompt_tokens = session.prefill(list(prompt))
    stats.forwards = 1  # the prefill's last position gives the first token
    history, generated, stop = list(prompt), [], set(stop_ids)
    stats.finish_reason = "length"
    t_first = None
    while len(generated) < max_tokens:
        token = sampler(logits, history)
        if t_first is None:
            t_first = time.perf_counter()
            stats.prefill_seconds = t_first - t0  # time to first token
        if token in stop:
            stats.finish_reason = "stop"
            break
        generated.append(token)
        history.append(token)
        stats.generated_tokens = len(generated)
        stats.decode_seconds = time.perf_counter() - t_first
        yield token
        if should_stop is not None and should_stop(generated):
            stats.finish_reason = "stop"
            break
        if len(generated) < max_tokens:
            logits = session.feed([token])[-1]
            stats.forwards += 1
