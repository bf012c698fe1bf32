"""NPU bundles: where their nodes run, how they load, what they keep of the model, their speed on
the CPU, and what a decode step moves.

    python benchmarks/bench_npu.py [--models tiny-chat,qwen05b] [--tokens 64] [--json PATH]

For each model (tiny-chat, and the Qwen2.5-0.5B-shaped random checkpoint of _checkpoint.py) the
dynamic CPU graph and NPU bundles (context 512, chunk 16) in fp32, fp16 and w8a16:
  - nodes each provider takes, per graph: QNN HTP (onnxruntime-qnn's simulator on x86-64 Linux,
    fallback allowed, so the count shows what is left), CoreML MLProgram and NNAPI (onnxruntime's
    own mobile checker; those providers are not in a Linux build);
  - load time on QNN HTP, cold and from the EPContext cache (each in a fresh process);
  - quality against the fp32 dynamic graph on the bundled held-out text: teacher-forced top-1
    agreement and perplexity (the CPU provider runs both);
  - speed on the CPU provider: prefill and greedy decode tok/s, bundles against the dynamic graph,
    same run; and the cost model a device run checks: bytes a decode step moves.
The simulator's times are not an NPU's and are labelled so. A part that fails is reported, the
benchmark goes on.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _report import cpu_name, plain_table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PRECISIONS = ("fp32", "fp16", "w8a16")
QUANT = {"fp32": "none", "fp16": "fp16", "w8a16": "w8a16"}




def source_of(name: str) -> str:
    if name == "qwen05b":
        from _checkpoint import ensure_checkpoint

        return str(ensure_checkpoint(dtype="float32"))
    from edgegen.models import source_path

    return str(source_path(name))  # a bundled model's folder


def converted(src: str, out: Path, precision: str | None) -> Path:
    """Converted in a child process (a w8a16 conversion needs several times the weights' memory)."""
    if not (out / "edgegen.json").is_file():
        extra = [] if precision is None else ["--target", "npu", "--context", "512", "--chunk", "16",
                                               "--quant", QUANT[precision]]
        subprocess.run([str(Path(sys.executable).with_name("edgegen")), "convert", src, "-o", str(out), "--force", *extra],
                       check=True, cwd=str(ROOT))
    return out


def in_child(code: str, timeout: int = 1800) -> dict:
    """Run `code` (which prints one JSON line last) in a fresh process: QNN keeps process-wide state."""
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                              cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        return {"error": " ".join((done.stderr or done.stdout).split())[-300:]}
    return json.loads(lines[-1])


def qnn_placement(folder: Path) -> dict:
    return in_child(f"""
import json
from pathlib import Path
from edgegen.runtimes.onnx.session import placement
out = {{}}
for g in ("npu.chunk.onnx", "npu.step.onnx"):
    try:
        out[g] = list(placement(Path({str(folder)!r}) / g, "qnn"))
    except Exception as exc:
        out[g] = str(exc)[:160]
print(json.dumps(out))""")


def qnn_load_times(folder: Path) -> dict:
    for stale in folder.glob("*.ctx*"):
        stale.unlink()
    code = f"""
import json, time
import edgegen
t = time.perf_counter(); edgegen.load({str(folder)!r}, provider="qnn"); print(json.dumps({{"s": time.perf_counter() - t}}))"""
    cold, cached = in_child(code), in_child(code)
    return {"cold_s": cold.get("s"), "cached_s": cached.get("s"), "error": cold.get("error") or cached.get("error")}


def mobile_checker(graph: Path) -> dict[str, str]:
    """onnxruntime's usability checker: 'P partitions, n/N nodes' for NNAPI and CoreML MLProgram."""
    done = subprocess.run([sys.executable, "-m", "onnxruntime.tools.check_onnx_model_mobile_usability", str(graph)],
                          capture_output=True, text=True, timeout=600)
    text, out, section = done.stdout + done.stderr, {}, None
    for line in text.splitlines():
        if "Checking NNAPI" in line:
            section = "NNAPI"
        elif "Checking CoreML MLProgram" in line:
            section = "CoreML MLProgram"
        elif "Checking CoreML" in line:
            section = None
        found = re.search(r"(\d+) partitions with a total of (\d+)/(\d+) nodes", line)
        if found and section:
            out[section] = f"{found[1]} partition{'s' if found[1] != '1' else ''}, {found[2]}/{found[3]} nodes"
    return out or {"error": " ".join(text.split())[-200:]}


def quality(a, bundle, ids: list[int]) -> dict:
    """`a`: the reference logits of `ids`."""
    import numpy as np

    b = bundle.logits(ids)

    def ppl(logits):
        z = logits[:-1] - logits[:-1].max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        return math.exp(-float(logp[np.arange(len(ids) - 1), ids[1:]].mean()))

    return {"top1": float((a.argmax(-1) == b.argmax(-1)).mean()), "ppl_ref": ppl(a), "ppl": ppl(b)}


def speed(model, ids: list[int], tokens: int, runs: int = 3) -> dict:
    def run(max_tokens: int):
        model.reset()  # the whole prompt every time: no prefix from the run before
        return model.generate(ids, max_tokens=max_tokens, ignore_eos=True).stats

    run(4)
    stats = [run(tokens) for _ in range(runs)]
    return {"decode": statistics.median(s.decode_tokens_per_s for s in stats),
            "prefill": statistics.median(s.prefill_tokens_per_s for s in stats)}


def step_bytes(folder: Path) -> dict:
    """What one decode step moves: the weights once, the static cache read whole, the new K/V and logits."""
    from edgegen.core.manifest import Manifest

    m = Manifest.read(folder)
    c, n = m.config, m.npu
    heads = c.get("num_key_value_heads") or c["num_attention_heads"]
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    act = 2 if n["precision"] in ("fp16", "w8a16") else 4  # uint16 or fp16 on the NPU
    cache = 2 * c["num_hidden_layers"] * heads * head_dim * n["context"] * act
    weights = (folder / m.files["npu_weights"]).stat().st_size
    return {"weights": weights, "cache": cache, "logits": c["vocab_size"] * act, "total": weights + cache}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="tiny-chat,qwen05b")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "edgegen-bench-npu")
    parser.add_argument("--skip-qnn", action="store_true", help="leave out the (slow) QNN simulator parts")
    args = parser.parse_args()
    import edgegen
    from edgegen.core.data import HELDOUT, bundled_text

    print(f"CPU: {cpu_name()} ({len(os.sched_getaffinity(0))} cores usable); QNN HTP = onnxruntime-qnn's simulator")
    results, place_rows, speed_rows = {}, [], []
    for name in args.models.split(","):
        src = source_of(name)
        folders = {p: converted(src, args.work / f"{name}-npu-{p}", p) for p in PRECISIONS}  # before loading
        dynamic = edgegen.load(converted(src, args.work / f"{name}-cpu", None))
        ids = [i for i in dynamic.tokenizer.encode(bundled_text(HELDOUT)) if i < dynamic.backend.vocab_size][:400]
        base = speed(dynamic, ids[:128], args.tokens)
        reference = dynamic.logits(ids)
        del dynamic
        gc.collect()
        speed_rows.append((name, "dynamic graph", "-", f"{base['prefill']:.0f}", f"{base['decode']:.1f}", "1.00", "-"))
        r = results[name] = {"dynamic": base}
        for precision in PRECISIONS:
            folder = folders[precision]
            bundle = edgegen.load(folder)
            q, s, cost = quality(reference, bundle, ids), speed(bundle, ids[:128], args.tokens), step_bytes(folder)
            del bundle
            gc.collect()
            r[precision] = {"quality": q, "speed": s, "step_bytes": cost,
                            "checker": {g: mobile_checker(folder / g) for g in ("npu.chunk.onnx", "npu.step.onnx")}}
            if not args.skip_qnn:
                r[precision]["qnn"] = qnn_placement(folder)
                r[precision]["qnn_load"] = qnn_load_times(folder)
            speed_rows.append((name, f"bundle {precision}", f"{q['top1']:.4f} / {q['ppl'] / q['ppl_ref'] - 1:+.2%}",
                               f"{s['prefill']:.0f}", f"{s['decode']:.1f}", f"{s['decode'] / base['decode']:.2f}",
                               f"{cost['total'] / 2**20:.1f}"))
            for graph in ("npu.chunk.onnx", "npu.step.onnx"):
                qnn = r[precision].get("qnn", {}).get(graph, "skipped")
                qnn = f"{qnn[0]}/{qnn[1]}" if isinstance(qnn, list) else str(qnn)[:60]
                checker = r[precision]["checker"][graph]
                load = r[precision].get("qnn_load", {})
                loaded = (f"{load['cold_s']:.2f} / {load['cached_s']:.2f}" if load.get("cold_s") and load.get("cached_s")
                          else str(load.get("error", "skipped"))[:40])
                place_rows.append((name, precision, graph, qnn, checker.get("CoreML MLProgram", "?"),
                                   checker.get("NNAPI", "?"), loaded if graph == "npu.step.onnx" else ""))
    print(plain_table([("model", "precision", "graph", "QNN HTP nodes", "CoreML MLProgram", "NNAPI",
                        "QNN load s cold / cached (sim.)")] + place_rows))
    print(plain_table([("model", "graph (CPU EP)", "top-1 / perplexity vs fp32", "prefill tok/s", "decode tok/s",
                        "× dynamic", "MB moved per step")] + speed_rows))
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_name(), "results": results}, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
