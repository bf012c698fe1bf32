"""Speculative decoding: plain decoding against each draft kind, both runtimes, one run.

    python benchmarks/bench_spec.py [--runtimes onnx,mlx] [--tokens 128] [--repeats 3] [--large [--checkpoint DIR]]

1. tiny-chat with tiny-draft, with its own q4 copy and with prompt lookup, on chat, rewrite and
   code prompts (greedy, EOS ignored): acceptance, tokens per target forward, decode tok/s and the
   speedup over plain decoding of the same prompt, for `--num-draft auto` and a fixed 4.
2. Sampling at T=1 on the same pair: the acceptance our rule gets (Σ min(p, q) per drafted token)
   against the exact-match rule of mlx-lm (Σ p·q), measured on the same positions; and mlx-lm's own
   `draft_model` speculation on the same pair, when mlx-lm is installed.
3. With --large: the Qwen2.5-0.5B-shaped checkpoint (random weights; `--checkpoint DIR` for a trained
   one, e.g. Qwen2.5-0.5B-Instruct, which no test or benchmark here can download) as an fp32 and a q8 ONNX
   target, drafted by its own q4 copy; greedy output must equal the plain fp32 output. Random
   weights have flat logits, so the q4 copy's proposals are rarely the target's argmax; the same
   part therefore also measures the costs (a q4 draft step, verification of γ + 1 tokens) and
   prints the speedup they give at acceptance rates a trained model has.
4. onnxruntime-genai's own speculation on the same pairs (its draft-model decoding with tiny-draft
   or with its own int4 build of tiny-chat, K = 4, and its n-gram lookup), fp32 like ours,
   interleaved with our plain decoding, tiny-draft, q4 self-draft and prompt lookup
   (`--only-peers`: this part alone, merged into the results file).
Every speculative run's tokens are checked against plain decoding (greedy is lossless).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from _common import ensure_checkpoint_in_child, log
from _report import plain_markdown, plain_table, versions
from _spec_prompts import PROMPTS

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
import edgegen  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "bench_spec.json"
DRAFTS = ("tiny-draft", "q4", "prompt-lookup")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runtimes", default="onnx,mlx")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--mlx-prompts", type=int, default=1, help="prompts per kind on MLX (its Linux CPU backend is slow)")
    p.add_argument("--large", action="store_true", help="also the 0.5B-shaped checkpoint (ONNX)")
    p.add_argument("--checkpoint", type=Path,
                   help="with --large: a trained Hugging Face checkpoint folder (e.g. Qwen2.5-0.5B-Instruct) instead "
                        "of the random-weight one; prompted with the rewrite prompt through its chat template, "
                        "prompt lookup drafted too")
    p.add_argument("--peers", default=1, type=int, choices=(0, 1),
                   help="also onnxruntime-genai's own speculation on the same pair (with onnx in --runtimes)")
    p.add_argument("--only-peers", action="store_true", help="the onnxruntime-genai comparison alone")
    p.add_argument("--out", type=Path, default=OUT)
    return p.parse_args()


def once(model, ids: list[int], tokens: int, **options):
    model.reset()  # every run from an empty cache (the draft's too)
    return model.generate(ids, max_tokens=tokens, ignore_eos=True, **options)


def interleaved(model, ids: list[int], configs: dict[str, dict], tokens: int, repeats: int) -> dict[str, dict]:
    """Each configuration once per round, `repeats` rounds after a warm-up round: the machine's
    drift (2 shared cores) hits every configuration alike. Medians per configuration."""
    runs: dict[str, list] = {name: [] for name in configs}
    for round_ in range(repeats + 1):
        for name, options in configs.items():
            g = once(model, ids, tokens, **options)
            if round_:
                runs[name].append(g)
    out = {}
    for name, gs in runs.items():
        stats = [g.stats for g in gs]
        out[name] = {"decode_tok_s": statistics.median(s.decode_tokens_per_s for s in stats),
                     "acceptance": statistics.median(s.acceptance_rate for s in stats),
                     "tokens_per_forward": statistics.median(s.tokens_per_forward for s in stats),
                     "draft_length": statistics.median(s.draft_length for s in stats), "tokens": gs[-1].token_ids}
    return out


def tiny_chat(runtime: str, args: argparse.Namespace) -> list[dict]:
    model = edgegen.load("tiny-chat", runtime=runtime)
    configs = {"none|0": {}} | {f"{d}|{n}": {"draft": d, "num_draft": n} for d in DRAFTS for n in ("auto", 4)}
    rows = []
    for kind, prompts in PROMPTS.items():
        for p_index, prompt in enumerate(prompts[: args.mlx_prompts] if runtime == "mlx" else prompts):
            ids = model.tokenizer.encode_chat([{"role": "user", "content": prompt}])
            results = interleaved(model, ids, configs, args.tokens, args.repeats)
            plain = results["none|0"]
            for name, r in results.items():
                draft, num = name.split("|")
                r["lossless"] = r["tokens"] == plain["tokens"]
                r["speedup"] = r["decode_tok_s"] / plain["decode_tok_s"]
                rows.append({"runtime": runtime, "kind": kind, "prompt": p_index, "draft": draft, "num_draft": num, **r})
                log(f"[{runtime}] {kind}#{p_index} {draft} γ={num}: {r['speedup']:.2f}×, "
                    f"acceptance {r['acceptance']:.2f}, {r['tokens_per_forward']:.2f} tok/forward")
    return rows


def acceptance_at_t1(runtime: str, tokens: int) -> dict:
    """Expected acceptance of one drafted token under both rules, teacher-forced on tiny-chat's own
    sampled text: Σ min(p, q) (speculative sampling) vs Σ p·q (independent samples that must match)."""
    import numpy as np

    from edgegen.decoding.sampling import Sampler, SamplingParams

    target, draft = edgegen.load("tiny-chat", runtime=runtime), edgegen.load("tiny-draft", runtime=runtime)
    sampler = Sampler(SamplingParams(temperature=1.0))
    ours, exact_match = [], []
    for prompt in PROMPTS["chat"] + PROMPTS["code"]:
        ids = target.tokenizer.encode_chat([{"role": "user", "content": prompt}])
        text = target.generate(ids, max_tokens=tokens, temperature=1.0, seed=0, ignore_eos=True).token_ids
        seq = ids + text
        p_rows, q_rows = target.logits(seq)[len(ids) - 1:-1], draft.logits(seq)[len(ids) - 1:-1]
        for i, (pl, ql) in enumerate(zip(p_rows, q_rows)):
            history = seq[: len(ids) + i]
            p, q = sampler.probs(pl, history), sampler.probs(ql, history)
            ours.append(np.minimum(p, q).sum())
            exact_match.append((p * q).sum())
    spec = target.generate(target.tokenizer.encode_chat([{"role": "user", "content": PROMPTS["chat"][0]}]),
                           max_tokens=tokens, temperature=1.0, seed=1, ignore_eos=True, draft="tiny-draft",
                           num_draft=1)
    return {"runtime": runtime, "positions": len(ours), "min_rule": float(np.mean(ours)),
            "exact_match_rule": float(np.mean(exact_match)), "measured_acceptance_gamma1": spec.stats.acceptance_rate}


def mlxlm_speculation(tokens: int) -> dict:
    """mlx-lm's own speculative decoding on the same pair (its `draft_model`), greedy and at T=1."""
    try:
        from mlx_lm import load as mlx_load, stream_generate
        from mlx_lm.sample_utils import make_sampler
    except ImportError:
        return {"status": "skipped (pip install mlx-lm)"}
    from edgegen.models import BUNDLED

    model, tok = mlx_load(str(BUNDLED / "tiny-chat"))
    draft, _ = mlx_load(str(BUNDLED / "tiny-draft"))
    prompt = tok.apply_chat_template([{"role": "user", "content": PROMPTS["chat"][0]}], add_generation_prompt=True)
    out = {"status": "ok"}
    for temp in (0.0, 1.0):
        for label, kwargs in (("plain", {}), ("draft", {"draft_model": draft, "num_draft_tokens": 3})):
            t0, n, from_draft, last = time.perf_counter(), 0, 0, None
            for response in stream_generate(model, tok, prompt, max_tokens=tokens, sampler=make_sampler(temp=temp),
                                            **kwargs):
                n += 1
                from_draft += int(getattr(response, "from_draft", False))
                last = response
            out[f"T{temp:g}_{label}"] = {"generation_tps": last.generation_tps, "tokens": n,
                                         "from_draft_share": from_draft / max(n, 1), "wall_s": time.perf_counter() - t0}
    return out


def ortgenai_speculation(args: argparse.Namespace) -> list[dict]:
    """onnxruntime-genai's own speculation on the same pair, fp32 like our ONNX tiny-chat: its draft
    model (tiny-draft, K = 4), its int4 build of tiny-chat as the draft (K = 4) and its n-gram lookup
    (n = 3, K = 4), against its plain decoding and ours, interleaved in rounds with our tiny-draft,
    q4 self-draft and prompt lookup (γ = 4 and auto), one prompt of each kind."""
    import os

    try:
        from _peers import open_ortgenai_speculation, prepare_ortgenai_pair
    except ImportError as exc:
        return [{"status": f"skipped ({exc})"}]
    from edgegen.models import BUNDLED

    threads = int(os.environ.get("EDGEGEN_THREADS", "0"))
    try:
        run = open_ortgenai_speculation(prepare_ortgenai_pair(BUNDLED / "tiny-chat", BUNDLED / "tiny-draft"), threads)
    except Exception as exc:  # noqa: BLE001 (a peer that fails is reported, the benchmark goes on)
        return [{"status": f"failed ({type(exc).__name__}: {exc})"}]
    ours = edgegen.load("tiny-chat", runtime="onnx")
    mine = {"edgegen plain": {}} | {f"edgegen {d} γ={n}": {"draft": d, "num_draft": n}
                                    for d in ("tiny-draft", "q4", "prompt-lookup") for n in (4, "auto")}
    theirs = ("plain", "draft", "q4", "ngram")
    rows = []
    for kind, prompts in PROMPTS.items():
        ids = ours.tokenizer.encode_chat([{"role": "user", "content": prompts[0]}])
        runs: dict[str, list] = {name: [] for name in list(mine) + [f"ort-genai {m}" for m in theirs]}
        for round_ in range(args.repeats + 1):
            for name, options in mine.items():
                g = once(ours, ids, args.tokens, **options)
                runs[name].append({"decode_tok_s": g.stats.decode_tokens_per_s, "tokens": g.token_ids,
                                   "acceptance": g.stats.acceptance_rate, "tokens_per_forward": g.stats.tokens_per_forward})
            for mode in theirs:
                runs[f"ort-genai {mode}"].append(run(ids, args.tokens, mode))
        for name, rs in runs.items():
            rs = rs[1:]  # the warm-up round left out
            engine = name.split()[0]
            base = statistics.median(r["decode_tok_s"] for r in runs[f"{engine} plain"][1:])
            row = {key: statistics.median(r[key] for r in rs) for key in ("decode_tok_s", "acceptance", "tokens_per_forward")}
            rows.append({"kind": kind, "config": name, **row, "speedup": row["decode_tok_s"] / base,
                         "equals_its_plain": rs[-1]["tokens"] == runs[f"{engine} plain"][-1]["tokens"],
                         "equals_edgegen_plain": rs[-1]["tokens"] == runs["edgegen plain"][-1]["tokens"]})
            log(f"[peer] {kind} {name}: {row['decode_tok_s']:.0f} tok/s, {rows[-1]['speedup']:.2f}× its plain, "
                f"acceptance {row['acceptance']:.2f}")
    return rows


def peer_table(rows: list[dict]) -> list[tuple[str, ...]]:
    header = ("prompts", "engine and draft", "acceptance", "tok/forward", "decode tok/s", "× its plain",
              "equals its plain")
    return [header] + [(r["kind"], r["config"], f"{r['acceptance']:.2f}", f"{r['tokens_per_forward']:.2f}",
                        f"{r['decode_tok_s']:.0f}", f"{r['speedup']:.2f}", "yes" if r["equals_its_plain"] else "no")
                       for r in rows if "config" in r]


def print_peers(rows: list[dict]) -> None:
    table = peer_table(rows)
    print("\nonnxruntime-genai speculation on the same pair, interleaved with ours (acceptance: ours is accepted / "
          "drafted, onnxruntime-genai's accepted / judged; tokens per target forward compare alike):")
    print(plain_table(table) + "\n\n" + plain_markdown(table) if table[1:] else rows)


def large(args: argparse.Namespace) -> list[dict]:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from _checkpoint import prompt_ids

    ckpt = args.checkpoint or ensure_checkpoint_in_child()
    ids = None if args.checkpoint else prompt_ids(ckpt, 128, 0)
    rows, reference = [], None
    configs = {"none": {}} | {f"q4 γ={n}": {"draft": "q4", "num_draft": n} for n in ("auto", 2, 4)}
    if args.checkpoint:  # a trained model: prompt lookup has a passage to copy from
        configs |= {"prompt-lookup γ=auto": {"draft": "prompt-lookup", "num_draft": "auto"}}
    for quant in ("none", "q8"):
        model = edgegen.load(str(ckpt), runtime="onnx", quant=quant)
        ids = ids or model.tokenizer.encode_chat([{"role": "user", "content": PROMPTS["rewrite"][0]}])
        results = interleaved(model, ids, configs, args.tokens, args.repeats)
        plain = results["none"]
        reference = reference or plain["tokens"]
        for name, r in results.items():
            r.update(speedup=r["decode_tok_s"] / plain["decode_tok_s"], lossless=r["tokens"] == plain["tokens"],
                     same_as_fp32=r["tokens"] == reference)
            rows.append({"target": "fp32" if quant == "none" else quant, "draft": name, **r})
            log(f"[0.5B {quant}] {name}: {r['speedup']:.2f}×, acceptance {r['acceptance']:.2f}")
        del model
    return rows, cost_model(ckpt, ids)


def forward_seconds(model, ids: list[int], n: int, repeats: int = 5) -> float:
    """Median wall time of one forward of `n` tokens after the prompt (logits for all of them, as a
    verification needs), the cache rolled back after each."""
    from edgegen.core.protocols import Feed

    backend, cache = model.backend, model.backend.new_cache()
    backend.forward(Feed(tokens=ids), cache)
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        backend.forward(Feed(tokens=ids[:n], rows=0 if n > 1 else 1), cache)
        times.append(time.perf_counter() - t0)
        cache.truncate(len(ids))
    return statistics.median(times[1:])


def cost_model(ckpt: Path, ids: list[int], alphas=(0.5, 0.6, 0.7, 0.8, 0.9, 0.95)) -> dict:
    """What random weights hide: the speedup a q4 self-draft would give at 0.5B if its proposals were
    accepted at rate α, from measured costs (a q4 draft step; fp32 / q8 verification of γ + 1 tokens):
    speedup(γ, α) = E(γ, α) · plain / (γ · draft + verify(γ)), E = (1 − α^{γ+1}) / (1 − α)."""
    draft = edgegen.load(str(ckpt), runtime="onnx", quant="q4")
    step = forward_seconds(draft, ids, 1)
    del draft
    out = {"draft_step_s": step}
    for quant in ("none", "q8"):
        model = edgegen.load(str(ckpt), runtime="onnx", quant=quant)
        verify = {g: forward_seconds(model, ids, g + 1) for g in range(9)}
        del model
        rows = {}
        for a in alphas:
            rate = {g: (1 - a ** (g + 1)) / (1 - a) * verify[0] / (g * step + verify[g]) for g in range(1, 9)}
            best = max(rate, key=rate.get)
            rows[str(a)] = {"best_gamma": best, "speedup": rate[best]}
        target = "fp32" if quant == "none" else quant
        out[target] = {"verify_s": verify, "projected": rows}
        log(f"[0.5B {target}] plain step {verify[0] * 1e3:.0f} ms, q4 draft step {step * 1e3:.0f} ms, verify of 5 "
            f"{verify[4] * 1e3:.0f} ms; projected speedup at α 0.7/0.8/0.9: "
            + " / ".join(f"{rows[str(a)]['speedup']:.2f}× (γ {rows[str(a)]['best_gamma']})" for a in (0.7, 0.8, 0.9)))
    return out


def summary_table(rows: list[dict]) -> list[tuple[str, ...]]:
    """Per runtime, kind and draft: the mean over prompts."""
    header = ("runtime", "prompts", "draft", "γ", "acceptance", "tok/forward", "decode tok/s", "speedup", "lossless")
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["runtime"], r["kind"], r["draft"], str(r["num_draft"])), []).append(r)  # mean of prompts
    table = [header]
    for (runtime, kind, draft, num), rs in groups.items():
        mean = lambda key: statistics.mean(r.get(key, 1.0) for r in rs)  # noqa: E731
        table.append((runtime, kind, draft, num if draft != "none" else "-", f"{mean('acceptance'):.2f}",
                      f"{mean('tokens_per_forward'):.2f}", f"{mean('decode_tok_s'):.0f}",
                      f"{mean('speedup'):.2f}" if draft != "none" else "1.00",
                      "yes" if all(r.get("lossless", True) for r in rs) else "NO"))
    return table


def main() -> int:
    args = parse_args()
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    report: dict = {"settings": settings, "versions": versions(), "tiny": [],
                    "t1": [], "mlx_lm": None, "large": [], "large_cost_model": None}
    if args.only_peers:  # the peer rows join the results file's other parts, from an earlier run
        report = json.loads(args.out.read_text()) if args.out.exists() else report
        report["ort_genai"] = ortgenai_speculation(args)
        report["ort_genai_settings"] = dict(settings)
        for r in report["ort_genai"]:
            r.pop("tokens", None)
        print_peers(report["ort_genai"])
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        return 0
    for runtime in [r for r in args.runtimes.split(",") if r]:  # --runtimes "" with --large: the 0.5B part alone
        log(f"== tiny-chat on {runtime}")
        report["tiny"] += tiny_chat(runtime, args)
        report["t1"].append(acceptance_at_t1(runtime, args.tokens))
    if "mlx" in args.runtimes:
        report["mlx_lm"] = mlxlm_speculation(args.tokens)
    if "onnx" in args.runtimes and args.peers:
        log("== onnxruntime-genai speculation on the same pair")
        report["ort_genai"] = ortgenai_speculation(args)
    if args.large:
        report["large"], report["large_cost_model"] = large(args)
    for rows in (report["tiny"], report["large"], report.get("ort_genai", [])):
        for r in rows:
            r.pop("tokens", None)
    if report["tiny"]:
        print("\n" + plain_table(summary_table(report["tiny"])))
        print("\n" + plain_markdown(summary_table(report["tiny"])))
    print("\nT=1 acceptance per drafted token (same positions):", json.dumps(report["t1"], indent=1))
    print("mlx-lm speculation:", json.dumps(report["mlx_lm"], indent=1))
    if report.get("ort_genai"):
        print_peers(report["ort_genai"])
    if report["large"]:
        print("0.5B-shaped:", json.dumps(report["large"], indent=1))
        print("0.5B-shaped cost model:", json.dumps(report["large_cost_model"], indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nresults written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
