"""Seconds per 256×256 image for a VAR-d16-shaped model (random weights): edgegen's ONNX and MLX
runtimes at fp32 and int8 against the same model in PyTorch eager on the CPU, in the same run.

    python benchmarks/bench_var.py                       # everything (MLX on a Linux CPU is slow)
    python benchmarks/bench_var.py --configs torch,onnx-fp32,onnx-q8 --threads 2

One image of class 207 with cfg 4, top-k 900, top-p 0.95 (the released demo's settings), seed 0;
time split into transformer (10 scales with sampling and the f̂ updates) and decoder. Conversions
are cached under $EDGEGEN_BENCH_CACHE (default ~/.cache/edgegen-bench). Results: a table on stdout
and JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import platform
import sys
import time
from pathlib import Path

import _var_model as vm

CONFIGS = {  # name -> convert options (None: the PyTorch reference)
    "torch": None,
    "onnx-fp32": dict(runtime="onnx"),
    "onnx-q8": dict(runtime="onnx", quant="q8"),
    "onnx-q4": dict(runtime="onnx", quant="q4"),
    "mlx-fp32": dict(runtime="mlx"),
    "mlx-q8": dict(runtime="mlx", quant="q8"),
}
DEFAULT = "torch,onnx-fp32,onnx-q8,mlx-fp32,mlx-q8"
SETTINGS = dict(label=207, cfg=4.0, top_k=900, top_p=0.95, seed=0)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def converted(depth: int, name: str, src: Path) -> Path:
    from edgegen.converters.convert import convert

    out = vm.CACHE_ROOT / f"var-d{depth}-{name}"
    if not (out / "edgegen.json").is_file():
        start = time.perf_counter()
        convert(str(src), out, force=True, **CONFIGS[name])
        log(f"converted {name} in {time.perf_counter() - start:.0f} s")
    return out


def measure(depth: int, names: list[str], threads: int, save=lambda results: None) -> dict[str, dict]:
    """Time each configuration in turn; `save(results)` after each, so a long run keeps what it has."""
    results: dict[str, dict] = {}
    models = vm.build_models(depth) if "torch" in names or not (vm.CACHE_ROOT / f"var-d{depth}-random").exists() else None
    src = vm.checkpoint(depth, models)
    if "torch" in names:
        import torch

        torch.set_num_threads(threads)
        log("torch: one image ...")
        results["torch"] = vm.torch_seconds(*models, **SETTINGS)
        save(results)
    del models
    gc.collect()
    for name in names:
        if name == "torch":
            continue
        folder = converted(depth, name, src)
        log(f"{name}: one image ...")
        try:
            results[name] = vm.edgegen_seconds(folder, threads=threads, **SETTINGS)
        except Exception as exc:  # report and go on: one engine failing must not hide the others
            results[name] = {"error": " ".join(str(exc).split())[:300]}
        gc.collect()
        log(f"{name}: {results[name]}")
        save(results)
    return results


def table(results: dict[str, dict]) -> str:
    base = results.get("torch", {}).get("total")
    rows = ["| configuration | transformer s | decoder s | total s per image | vs PyTorch |",
            "|---|---:|---:|---:|---:|"]
    for name, r in results.items():
        if "error" in r:
            rows.append(f"| {name} | failed: {r['error']} | | | |")
            continue
        ratio = f"{base / r['total']:.2f}×" if base else "–"
        rows.append(f"| {name} | {r['transformer']:.1f} | {r['decoder']:.1f} | {r['total']:.1f} | {ratio} |")
    return "\n".join(rows)


def versions() -> dict[str, str | None]:
    found = {}
    for name in ("edgegen", "onnxruntime", "mlx", "torch", "numpy"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=DEFAULT, help=f"comma-separated, from {', '.join(CONFIGS)}")
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_var.json")
    args = parser.parse_args()
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration {unknown[0]}; choose from {', '.join(CONFIGS)}")
    os.environ.setdefault("EDGEGEN_THREADS", str(args.threads))
    load_before = os.getloadavg()

    def save(results: dict[str, dict]) -> str:
        text = table(results)
        report = {"model": f"VAR-d{args.depth}-shaped, random weights, 256x256, 10 scales (680 tokens), CFG batch 2",
                  "settings": SETTINGS, "threads": args.threads, "cpu_count": os.cpu_count(),
                  "machine": platform.processor() or platform.machine(), "load_average_before": load_before,
                  "load_average_after": os.getloadavg(), "versions": versions(), "results": results,
                  "table": text, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        return text

    print(save(measure(args.depth, names, args.threads, save)))
    log(f"saved {args.out}")


if __name__ == "__main__":
    main()
