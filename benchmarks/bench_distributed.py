"""Distributed MLX: one process against two ranks on loopback (tensor and pipeline parallel), with
mlx-lm's own distributed benchmark in the same run, on the Qwen2.5-0.5B-shaped checkpoint (fp32).

    python benchmarks/bench_distributed.py [--prompt-tokens 128] [--new-tokens 32]

Prints prefill and decode tok/s, peak memory per rank, bytes each rank sends per decoded token,
and whether the greedy tokens equal one process's. Two ranks on one 2-core CPU share its cores
and talk over loopback, so the ratios here are the cost of the communication, not a speed-up; the
cost model at the end turns the measured bytes and message counts into a per-token time for a
10 Gb/s Ethernet and a Thunderbolt 5 link (assumptions printed with it).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _checkpoint import QWEN05B_SHAPE, ensure_checkpoint  # noqa: E402
from _common import cached_build, package_key, sources_key  # noqa: E402
from _peers import prepare_mlxlm  # noqa: E402
from _report import cpu_name, versions  # noqa: E402

WORKER = HERE / "_distributed_worker.py"
RESULTS = HERE / "results" / "bench_distributed.json"
# Assumed links for the cost model: one-way latency of a small message and bandwidth.
LINKS = {"10 Gb/s Ethernet (TCP, ring backend)": (30e-6, 1.25e9),
         "Thunderbolt 5 (80 Gb/s, JACCL RDMA)": (5e-6, 10e9)}


def launcher() -> str:
    found = shutil.which("mlx.launch", path=str(Path(sys.executable).parent)) or shutil.which("mlx.launch")
    if found is None:
        sys.exit("bench_distributed: mlx.launch not found; pip install 'mlx[cpu]' (Linux) or mlx (macOS)")
    return found


def fresh_port() -> list[str]:
    """A starting port of its own for each launch: back-to-back launches on the ring's default
    ports can meet the last one's sockets still closing."""
    import random

    return ["--starting-port", str(random.randrange(20000, 60000, 16))]


def run(command: list[str], timeout: float) -> subprocess.CompletedProcess:
    """One launch; a failed one is tried once more (a port still closing, say), with fresh ports."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode and "--starting-port" in command:
        at = command.index("--starting-port") + 1
        command = [*command[:at], fresh_port()[1], *command[at + 1:]]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    return done


def edgegen_run(folder: Path, mode: str, args, work: Path) -> dict:
    out = work / f"edgegen-{mode}.json"
    worker = [sys.executable, str(WORKER), str(folder), mode, str(args.prompt_tokens), str(args.new_tokens), str(out)]
    command = worker if mode == "one" else [launcher(), "--backend", "ring", "-n", "2", *fresh_port(), "--", *worker]
    t0 = time.perf_counter()
    try:
        done = run(command, args.timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timed out after {args.timeout} s"}
    if done.returncode or not out.exists():
        return {"status": "failed: " + (done.stderr.strip().splitlines() or ["no output"])[-1][:200]}
    return {"status": "ok", "wall_s": round(time.perf_counter() - t0, 1), **json.loads(out.read_text())}


AVERAGES = re.compile(r"prompt_tps=([\d.]+), generation_tps=([\d.]+), peak_memory=([\d.]+)")


def mlxlm_run(folder: Path, mode: str, args) -> dict:
    bench = [sys.executable, "-m", "mlx_lm", "benchmark", "--model", str(folder), "-p", str(args.prompt_tokens),
             "-g", str(args.new_tokens), "-n", "1"] + (["--pipeline"] if mode == "pipeline" else [])
    command = bench if mode == "one" else [launcher(), "--backend", "ring", "-n", "2", *fresh_port(), "--", *bench]
    try:
        done = run(command, args.timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timed out after {args.timeout} s"}
    found = AVERAGES.search(done.stdout)
    if done.returncode or found is None:
        return {"status": "failed: " + ((done.stderr or done.stdout).strip().splitlines() or ["no output"])[-1][:200]}
    prefill, decode, peak_gb = map(float, found.groups())
    return {"status": "ok", "prefill_tok_s": prefill, "decode_tok_s": decode, "mlx_peak_mb": peak_gb * 1000}


def messages_per_token(mode: str, layers: int) -> tuple[int, str]:
    """Sequential messages on the critical path of one decoded token, and what they are."""
    if mode == "tensor":  # two all-sums per layer, each a reduce-scatter and an all-gather on 2 ranks
        return 2 * (2 * layers + 2), f"2 × (2 all-sums × {layers} layers + 2 command all-sums)"
    return 2 + 2 * 2, "2 hops of hidden states + 2 command all-sums"


def cost_model(results: dict, layers: int) -> list[str]:
    one = results["edgegen one process"]
    if one.get("status") != "ok":
        return ["(no one-process figure to model from)"]
    compute = 1 / one["decode_tok_s"]
    lines = [f"one process decodes a token in {compute * 1e3:.1f} ms on this CPU; on two such machines:"]
    for mode in ("tensor", "pipeline"):
        r = results[f"edgegen {mode}"]
        if r.get("status") != "ok":
            continue
        count, what = messages_per_token(mode, layers)
        sent = max(r["bytes_per_token"])
        work = compute / 2 if mode == "tensor" else compute  # pipeline: one sequence visits the ranks in turn
        lines.append(f"  {mode}: {sent / 1024:.1f} KiB sent per token per rank, {count} sequential messages ({what})")
        for link, (latency, bandwidth) in LINKS.items():
            comm = count * latency + sent / bandwidth
            lines.append(f"    {link}: {comm * 1e3:.2f} ms of communication per token → "
                         f"{1 / (work + comm):.1f} tok/s ({compute / (work + comm):.2f}× one machine)")
    lines.append("  assumed links: " + "; ".join(f"{k}: {lat * 1e6:.0f} µs per message, {bw / 1e9:.2f} GB/s"
                                               for k, (lat, bw) in LINKS.items()))
    return lines


def table(results: dict) -> list[str]:
    base = results["edgegen one process"]
    rows = ["| engine | prefill tok/s | decode tok/s | decode × one process | peak RSS MB per rank | "
            "MLX allocator peak MB, rank 0 | KiB sent per token per rank | greedy tokens = one process |",
            "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        if r.get("status") != "ok":
            rows.append(f"| {name} | {r['status']} | | | | | | |")
            continue
        ratio = f"{r['decode_tok_s'] / base['decode_tok_s']:.2f}" if base.get("status") == "ok" and \
            name.startswith("edgegen") else ""
        one_mlx = results.get("mlx-lm one process", {})
        if name.startswith("mlx-lm") and one_mlx.get("status") == "ok":
            ratio = f"{r['decode_tok_s'] / one_mlx['decode_tok_s']:.2f}"
        sent = " / ".join(f"{b / 1024:.1f}" for b in r.get("bytes_per_token", [])) or "–"
        same = "–" if "tokens" not in r or "tokens" not in base else ("yes" if r["tokens"] == base["tokens"] else "NO")
        rss = " / ".join(f"{m:.0f}" for m in r.get("peak_memory_mb", [])) or "–"
        rows.append(f"| {name} | {r['prefill_tok_s']:.1f} | {r['decode_tok_s']:.1f} | {ratio} | {rss} | "
                    f"{r['mlx_peak_mb']:.0f} | {sent} | {same} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    launcher()
    ckpt = ensure_checkpoint()

    def build(out: Path) -> None:
        import edgegen

        edgegen.convert(str(ckpt), str(out), runtime="mlx", dtype="fp32")

    key = package_key("mlx") + sources_key(HERE.parent / "edgegen" / "converters")
    folder = cached_build("edgegen-mlx-fp32", ckpt, build, key)
    mlxlm_folder = prepare_mlxlm(ckpt)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("one", "tensor", "pipeline"):
            name = "edgegen one process" if mode == "one" else f"edgegen {mode}"
            results[name] = edgegen_run(folder, mode, args, Path(tmp))
            print(name, {k: v for k, v in results[name].items() if k not in ("tokens", "ranks")}, flush=True)
        for mode in ("one", "tensor", "pipeline"):
            name = "mlx-lm one process" if mode == "one" else f"mlx-lm {mode}"
            results[name] = mlxlm_run(mlxlm_folder, mode, args)
            print(name, results[name], flush=True)
    lines = [f"CPU: {cpu_name()}; prompt {args.prompt_tokens} random tokens, {args.new_tokens} new, greedy; "
             "two ranks = `mlx.launch --backend ring -n 2` on this machine (loopback)", "", *table(results), "",
             *cost_model(results, QWEN05B_SHAPE["num_hidden_layers"])]
    print("\n".join(lines))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"cpu": cpu_name(), "settings": vars(args), "versions": versions(),
                                   "results": results, "report": lines}, indent=2) + "\n")


if __name__ == "__main__":
    main()
