"""Prompts, timed replies and the quality proxy shared by bench_dllm.py and tiny-chat-bd's model card
(examples/tiny_bd_eval.py): perplexity of a reply under tiny-chat (the autoregressive model), and
its token agreement with tiny-chat's greedy reply to the same prompt."""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

# Eight questions from pages held out of training (examples/tiny_corpus.py), four written for tiny-chat's card.
PROMPTS = (
    "What does asyncio.get_running_loop do?",
    "What is graphlib.TopologicalSorter for?",
    "What is reprlib?",
    "Describe reprlib.Repr.",
    "Explain ssl.",
    "Tell me about Measures of spread.",
    "What is xml.etree.ElementTree?",
    "Tell me about 8.1. The if statement.",
    "What does json.dumps do?",
    "Explain list comprehensions.",
    "What is a generator?",
    "Tell me about the statistics module.",
)
MAX_TOKENS = 64


@dataclass
class Reply:
    prompt_ids: list[int]
    ids: list[int]  # the reply, stop token excluded
    text: str
    seconds: float  # end to end: prompt and reply
    forwards: int
    decode_tok_s: float
    finish: str
    runs: list[float] = field(default_factory=list)  # every timed run's seconds


def reply(model, prompt: str, repeats: int = 1, **options) -> Reply:
    """Greedy chat reply (at most MAX_TOKENS, stopping at EOS) from an empty cache; the median of
    `repeats` timed runs after one untimed warm-up run."""
    ids = model.tokenizer.encode_chat([{"role": "user", "content": prompt}])
    seconds, result = [], None
    for i in range(repeats + 1):
        model.reset()
        t0 = time.perf_counter()
        result = model.generate(ids, max_tokens=MAX_TOKENS, **options)
        if i:
            seconds.append(time.perf_counter() - t0)
    s = result.stats
    return Reply(ids, result.token_ids, result.text, float(np.median(seconds)), s.forwards, s.decode_tokens_per_s,
                 s.finish_reason, seconds)


def nll_under(scorer, prompt_ids: list[int], reply_ids: list[int]) -> float:
    """Summed negative log-likelihood of `reply_ids` after `prompt_ids` under `scorer` (a Model)."""
    if not reply_ids:
        return 0.0
    logits = scorer.logits(prompt_ids + reply_ids)[len(prompt_ids) - 1:-1].astype(np.float64)  # (n, V)
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return float(-logp[np.arange(len(reply_ids)), reply_ids].sum())


def perplexity(scorer, replies: list[Reply]) -> float:
    """exp(mean NLL per reply token) over all replies, under `scorer`."""
    nll = sum(nll_under(scorer, r.prompt_ids, r.ids) for r in replies)
    count = sum(len(r.ids) for r in replies)
    return math.exp(nll / count) if count else float("nan")


def agreement(a: list[int], b: list[int]) -> float:
    """Share of positions where two replies hold the same token, over the longer reply."""
    longest = max(len(a), len(b))
    return sum(x == y for x, y in zip(a, b)) / longest if longest else 1.0


def summarize(replies: list[Reply], reference: list[Reply] | None, scorer) -> dict:
    """Figures over a prompt set: tokens per forward, speeds, the quality proxy. With a reference
    (the autoregressive model's replies), the perplexity ratio is also given over only the prompts
    whose reference reply ends within MAX_TOKENS: a looping reference reply scores a low perplexity
    (repetition is easy to predict) and its tokens would otherwise weigh most in the ratio. Distinct
    replies and the commonest one's count show a model collapsed onto a canned reply, which the
    scorer finds fluent whatever was asked (so perplexity alone does not see it)."""
    tokens = sum(len(r.ids) for r in replies)
    counts = Counter(tuple(r.ids) for r in replies)
    out = {
        "tokens": tokens,
        "forwards": sum(r.forwards for r in replies),
        "tokens_per_forward": tokens / max(sum(r.forwards for r in replies), 1),
        "wall_tok_s": tokens / sum(r.seconds for r in replies),
        "decode_tok_s": float(np.median([r.decode_tok_s for r in replies])),  # a mean of rates is ruled by replies done in one or two forwards
        "mean_reply_tokens": tokens / len(replies),
        "stopped": sum(r.finish == "stop" for r in replies),
        "perplexity_under_ar": perplexity(scorer, replies),
        "distinct": len(counts),
        "most_repeated": max(counts.values(), default=0),
    }
    if reference is not None:
        out["agreement_with_ar"] = float(np.mean([agreement(r.ids, a.ids) for r, a in zip(replies, reference)]))
        out["identical_to_ar"] = sum(r.ids == a.ids for r, a in zip(replies, reference))
        ended = [i for i, a in enumerate(reference) if a.finish == "stop"]
        out["ar_ended"] = len(ended)
        out["ratio_where_ar_ends"] = (perplexity(scorer, [replies[i] for i in ended])
                                      / perplexity(scorer, [reference[i] for i in ended]))
    return out
