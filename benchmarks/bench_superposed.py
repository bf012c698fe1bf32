"""Superposed decoding: k drafts from one pass against k nucleus samples and k beams, one run.

    python benchmarks/bench_superposed.py [--runtimes onnx,mlx] [--tokens 16] [--prompts 8]

On the bundled tiny-chat (with its bundled n-gram store), for k = 2, 3, 5 and each runtime: the
wall-clock time to produce a set of k drafts of `--tokens` tokens, the perplexity of each draft
under the model itself (teacher-forced after the prompt: coherence) and distinct-1/2 over the set
(diversity), for
  - superposed decoding (one pass, k drafts),
  - k nucleus samples (top-p 0.9, temperature 1: k separate generations, prefix reused),
  - k greedy beams (beam search of width k, each beam with its own KV cache).
The paper's claim to test: superposed is at least 2.44x faster than k nucleus samples for k >= 3.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from _report import plain_markdown, plain_table, versions

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
import edgegen  # noqa: E402
from edgegen.decoding.autoregressive import Session  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "bench_superposed.json"
HELDOUT = (REPO / "edgegen" / "_data" / "heldout-eval.txt").read_text().split(". ")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runtimes", default="onnx,mlx")
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--prompts", type=int, default=8, help="prompt prefixes taken from a held-out page")
    p.add_argument("--ks", default="2,3,5")
    p.add_argument("--out", type=Path, default=OUT)
    return p.parse_args()


def prompts(model, n: int) -> list[list[int]]:
    """The first words of n sentences of the held-out page, as an autocomplete would see them."""
    out = []
    for sentence in HELDOUT[3:3 + n]:
        words = sentence.split()
        out.append(model.tokenizer.encode(" ".join(words[: max(3, len(words) // 3)])))
    return out


def superposed(model, ids, k, tokens):
    result = model.complete(ids, drafts=k, max_tokens=tokens, ignore_eos=True)
    return [d.token_ids for d in result.drafts]


def nucleus(model, ids, k, tokens):
    return [model.generate(ids, max_tokens=tokens, temperature=1.0, top_p=0.9, seed=s, ignore_eos=True).token_ids
            for s in range(k)]


def beams(model, ids, k, tokens):
    """Beam search of width k; every beam keeps its own cache (re-synced by prefix reuse)."""
    sessions = [Session(model.backend) for _ in range(k)]
    logits = sessions[0].prefill(ids)[0]
    alive = [([], 0.0, logits)]
    for _ in range(tokens):
        candidates = []
        for seq, score, row in alive:
            logp = row - np.logaddexp.reduce(row)
            for t in np.argsort(-logp)[:k]:
                candidates.append((seq + [int(t)], score + float(logp[t])))
        candidates.sort(key=lambda c: -c[1])
        alive = []
        for session, (seq, score) in zip(sessions, candidates[:k]):
            row = session.prefill(ids + seq)[0]
            alive.append((seq, score, row))
    return [seq for seq, _, _ in alive]


def perplexity(model, ids, draft) -> float:
    if not draft:
        return float("nan")
    logits = model.logits(ids + draft)[len(ids) - 1:-1]
    logp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    return math.exp(-float(np.mean(logp[np.arange(len(draft)), draft])))


def distinct(drafts, n) -> float:
    grams = [tuple(d[i:i + n]) for d in drafts for i in range(len(d) - n + 1)]
    return len(set(grams)) / max(len(grams), 1)


METHODS = {"superposed": superposed, "nucleus": nucleus, "beams": beams}


def measure(model, runtime: str, k: int, args: argparse.Namespace) -> list[dict]:
    rows = []
    sets = prompts(model, args.prompts)
    for name, method in METHODS.items():
        times, ppl, d1, d2 = [], [], [], []
        method(model, sets[0], k, args.tokens)  # warm-up
        for ids in sets:
            model.reset()
            model.generate(ids, max_tokens=1)  # the prompt in the cache for every method alike
            t0 = time.perf_counter()
            drafts = method(model, ids, k, args.tokens)
            times.append(time.perf_counter() - t0)
            ppl += [perplexity(model, ids, d) for d in drafts]
            d1.append(distinct(drafts, 1))
            d2.append(distinct(drafts, 2))
        rows.append({"runtime": runtime, "k": k, "method": name, "seconds_per_set": statistics.median(times),
                     "perplexity": statistics.median(ppl), "distinct_1": statistics.mean(d1),
                     "distinct_2": statistics.mean(d2)})
        print(f"[{runtime} k={k}] {name}: {rows[-1]['seconds_per_set'] * 1000:.1f} ms per set, "
              f"perplexity {rows[-1]['perplexity']:.2f}", file=sys.stderr)
    base = next(r for r in rows if r["method"] == "nucleus")["seconds_per_set"]
    for r in rows:
        r["speedup_vs_nucleus"] = base / r["seconds_per_set"]
    return rows


def main() -> int:
    args = parse_args()
    results = []
    for runtime in args.runtimes.split(","):
        model = edgegen.load("tiny-chat", runtime=runtime)
        for k in (int(x) for x in args.ks.split(",")):
            results += measure(model, runtime, k, args)
    header = ("runtime", "k", "method", "ms per set", "× vs nucleus", "perplexity", "distinct-1", "distinct-2")
    table = [header] + [(r["runtime"], str(r["k"]), r["method"], f"{r['seconds_per_set'] * 1000:.1f}",
                         f"{r['speedup_vs_nucleus']:.2f}", f"{r['perplexity']:.2f}", f"{r['distinct_1']:.2f}",
                         f"{r['distinct_2']:.2f}") for r in results]
    print("\n" + plain_table(table) + "\n\n" + plain_markdown(table))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()}, "versions": versions(),
                                    "results": results}, indent=1) + "\n")
    print(f"\nresults written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
