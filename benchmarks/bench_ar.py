"""Autoregressive generation speed: edgegen against ORT GenAI, llama.cpp and mlx-lm, same run.

    python benchmarks/bench_ar.py [--engines a,b,c] [--repeats 3] [--out results.json]

On a Qwen2.5-0.5B-shaped checkpoint with random weights (built once and cached under
~/.cache/edgegen-bench), each engine converts it with its own tool (cached too), then generates
128 greedy tokens (EOS ignored) after a fixed 128-token prompt: one warm-up, then the median of
--repeats runs. Every engine runs in its own child process (this script with --engine NAME), so
peak memory (ru_maxrss) is per engine. Engines whose package is missing are reported as skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

from _checkpoint import ensure_checkpoint, prompt_ids
from _common import (EngineUnavailable, OthersCpu, build_seconds, dir_mb, ensure_checkpoint_in_child, log,
                     peak_rss_mb, summarize, wait_for_quiet)
from _engines import BASELINE, DEFAULT_ENGINES, ENGINES
from _report import metadata, render, write_json

RESULT_MARK = "@@bench-result "
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_ar.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engines", default=",".join(DEFAULT_ENGINES),
                   help=f"comma-separated subset of: {', '.join(ENGINES)}")
    p.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2, help="CPU threads where the engine takes it")
    p.add_argument("--seed", type=int, default=0, help="seed of the random prompt")
    p.add_argument("--baseline", default=BASELINE, help="engine the ratios are relative to")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    p.add_argument("--wait-quiet", type=float, default=120, metavar="SECONDS",
                   help="before each engine, wait up to this long for other processes to use "
                        "under --max-busy of the CPU (0: do not wait)")
    p.add_argument("--max-busy", type=float, default=0.25, help="see --wait-quiet")
    p.add_argument("--engine", help=argparse.SUPPRESS)  # child: one engine
    p.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)  # child: convert
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # child: measure
    p.add_argument("--artefact", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = [e for e in args.engines.split(",") if e and e not in ENGINES]
    if unknown or args.repeats < 1 or args.new_tokens < 2:
        p.error(f"unknown engine(s) {unknown}" if unknown else "need --repeats >= 1 and "
                "--new-tokens >= 2")
    return args


# ------------------------------------------------------------------ child process


def child_prepare(name: str) -> dict:
    engine = ENGINES[name]
    engine.check()
    t0 = time.perf_counter()
    artefact = engine.prepare(ensure_checkpoint())
    return {"status": "ok", "artefact": str(artefact), "prepare_s": time.perf_counter() - t0,
            "build_s": build_seconds(artefact), "size_mb": dir_mb(artefact)}


def child_measure(args: argparse.Namespace) -> dict:
    engine = ENGINES[args.engine]
    engine.check()
    prompt = prompt_ids(ensure_checkpoint(), args.prompt_tokens, args.seed)
    t0 = time.perf_counter()
    run = engine.open(args.artefact, args.threads)
    load_s = time.perf_counter() - t0
    log(f"[{args.engine}] loaded in {load_s:.1f} s; warm-up ...")
    run(prompt, args.new_tokens)
    others, runs = OthersCpu(), []
    for i in range(args.repeats):
        stats = run(prompt, args.new_tokens)
        log(f"[{args.engine}] run {i + 1}/{args.repeats}: prefill {stats.prefill_tok_s:.1f} "
            f"tok/s, decode {stats.decode_tok_s:.1f} tok/s")
        runs.append(stats)
    return {"status": "ok", "load_s": load_s, **summarize(runs), "peak_rss_mb": peak_rss_mb(),
            "others_cpu_share": others.share()}


def child_main(args: argparse.Namespace) -> int:
    try:
        result = child_prepare(args.engine) if args.prepare else child_measure(args)
    except EngineUnavailable as err:
        reason = str(err) if str(err).startswith("skipped") else f"skipped ({err})"
        result = {"status": "skipped", "reason": reason}
    except Exception as err:  # reported in the table; the traceback goes to the log
        traceback.print_exc()
        result = {"status": "failed", "reason": f"{type(err).__name__}: {err}"}
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


# ------------------------------------------------------------------ parent process


def run_child(name: str, extra: list[str]) -> dict:
    """Run this script for one engine; its output streams through, its result comes back."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--engine", name, *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    result: dict | None = None
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(RESULT_MARK):
                result = json.loads(line[len(RESULT_MARK):])
            else:
                sys.stderr.write("    " + line)
    if result is None:
        return {"status": "failed", "reason": f"child exited with {proc.returncode}"}
    return result


def bench_engine(name: str, args: argparse.Namespace) -> dict:
    log(f"== {name}: preparing (cached after the first run) ...")
    prep = run_child(name, ["--prepare"])
    if prep["status"] != "ok":
        log(f"== {name}: {prep['status']}: {prep.get('reason', '')}")
        return prep
    busy = wait_for_quiet(args.max_busy, args.wait_quiet) if args.wait_quiet > 0 else None
    log(f"== {name}: measuring ({args.repeats} runs after a warm-up) ...")
    shared = ["--repeats", str(args.repeats), "--prompt-tokens", str(args.prompt_tokens),
              "--new-tokens", str(args.new_tokens), "--threads", str(args.threads),
              "--seed", str(args.seed)]
    result = run_child(name, ["--json", "--artefact", prep["artefact"], *shared])
    result.update({k: prep[k] for k in ("artefact", "prepare_s", "build_s", "size_mb")})
    result["what"] = ENGINES[name].what
    result["busy_before"] = busy
    if result["status"] == "ok":
        log(f"== {name}: prefill {result['prefill_tok_s']:.1f} tok/s, decode "
            f"{result['decode_tok_s']:.1f} tok/s, peak RSS {result['peak_rss_mb']:.0f} MB")
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.engine:
        return child_main(args)
    t0 = time.perf_counter()
    ckpt = ensure_checkpoint_in_child()
    results = {}
    for name in [e for e in args.engines.split(",") if e]:
        results[name] = bench_engine(name, args)
    settings = {k: getattr(args, k) for k in ("engines", "repeats", "prompt_tokens",
                                              "new_tokens", "threads", "seed", "wait_quiet",
                                              "max_busy")}
    meta = metadata(settings, ckpt)
    meta["total_s"] = time.perf_counter() - t0
    print("\n" + render(results, meta, args.baseline))
    write_json(args.out, meta, results, args.baseline)
    print(f"\nresults written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
