"""NPU bundles: where their nodes run, how they load, what they keep, and their speed on the CPU.

    python benchmarks/bench_npu.py [--models tiny-chat,qwen05b] [--tokens 64] [--json PATH]

For each model (tiny-chat, and the Qwen2.5-0.5B-shaped random checkpoint of _checkpoint.py):
  - nodes per execution provider for the chunk and step graphs: QNN HTP (onnxruntime-qnn's
    simulator on x86-64 Linux, where installed), CoreML MLProgram and NNAPI (onnxruntime's own
    usability checker; these providers are not in a Linux build);
  - load time on QNN HTP, cold and from the EPContext cache;
  - quality: teacher-forced top-1 agreement and perplexity of the fp16 bundle against the fp32
    dynamic graph on the bundled held-out text (the CPU provider runs both);
  - speed on the CPU provider: greedy decode and prefill tok/s of the bundle against the dynamic
    graph, same run, and the bytes each decode step reads (the cost model a device run checks).
Simulator times are not NPU times and are labelled so.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _report import plain_table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def source_of(name: str) -> str:
    if name == "qwen05b":
        from _checkpoint import ensure_checkpoint

        return str(ensure_checkpoint(dtype="float32"))
    return name


def convert(src: str, out: Path, *args: str) -> Path:
    import edgegen

    if not (out / "edgegen.json").is_file():
        kwargs = dict(target="npu", context=512, chunk=16) if "npu" in args else {}
        if "fp16" in args:
            kwargs["quant"] = "fp16"
        edgegen.convert(src, out, **kwargs)
    return out


def mobile_usability(graph: Path) -> dict[str, str]:
    """onnxruntime's checker on one graph: its verdict lines for NNAPI and CoreML (MLProgram)."""
    from onnxruntime.tools import check_onnx_model_mobile_usability as checker
    import logging

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("check_usability")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(stream):
            sys.argv = ["checker", str(graph)]
            checker.check_usability(str(graph), logger) if hasattr(checker, "check_usability") else checker.run_check()
    except Exception as exc:  # the checker's own failures are reported, the benchmark goes on
        return {"error": f"{type(exc).__name__}: {exc}"[:200]}
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    return {"summary": " | ".join(line.strip() for line in text.splitlines()
                                  if "partition" in line.lower() or "nodes" in line.lower())[:600]}


def speed(model, ids: list[int], tokens: int, runs: int = 3) -> dict:
    model.generate(ids, max_tokens=8, ignore_eos=True)
    stats = [model.generate(ids, max_tokens=tokens, ignore_eos=True).stats for _ in range(runs)]
    return {"decode_tok_s": statistics.median(s.decode_tokens_per_s for s in stats),
            "prefill_tok_s": statistics.median(s.prefill_tokens_per_s for s in stats)}


def quality(reference, bundle, ids: list[int]) -> dict:
    import numpy as np

    a, b = reference.logits(ids), bundle.logits(ids)
    agree = float((a.argmax(-1) == b.argmax(-1)).mean())

    def ppl(logits):
        z = logits[:-1] - logits[:-1].max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        return math.exp(-float(logp[np.arange(len(ids) - 1), ids[1:]].mean()))

    return {"top1_agreement": agree, "ppl_reference": ppl(a), "ppl_bundle": ppl(b)}


def step_bytes(manifest) -> int:
    """Bytes a decode step reads: every weight once, plus the whole static cache (read, not grown)."""
    c, n = manifest.config, manifest.npu
    width = 2 if n["precision"] == "fp16" else 4
    heads = c.get("num_key_value_heads") or c["num_attention_heads"]
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    cache = 2 * c["num_hidden_layers"] * heads * head_dim * n["context"] * 4
    return cache, width


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="tiny-chat,qwen05b")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "edgegen-bench-npu")
    args = parser.parse_args()
    import edgegen
    from edgegen.core.data import HELDOUT, bundled_text

    print(f"CPU: {cpu_name()} ({len(os.sched_getaffinity(0))} cores)")
    rows, results = [], {}
    for name in args.models.split(","):
        src = source_of(name)
        dyn = edgegen.load(convert(src, args.work / f"{name}-cpu"))
        fp32 = edgegen.load(convert(src, args.work / f"{name}-npu-fp32", "npu"))
        fp16_dir = convert(src, args.work / f"{name}-npu-fp16", "npu", "fp16")
        fp16 = edgegen.load(fp16_dir)
        ids = [i for i in dyn.tokenizer.encode(bundled_text(HELDOUT)) if i < dyn.backend.vocab_size][:400]
        prompt = ids[:128]
        r = {"quality_fp32": quality(dyn, fp32, ids), "quality_fp16": quality(dyn, fp16, ids),
             "speed_dynamic": speed(dyn, prompt, args.tokens), "speed_bundle_fp32": speed(fp32, prompt, args.tokens),
             "usability_step": mobile_usability(fp16_dir / "npu.step.onnx")}
        results[name] = r
        for label, key in (("dynamic graph (CPU EP)", "speed_dynamic"), ("NPU bundle fp32 (CPU EP)", "speed_bundle_fp32")):
            s = r[key]
            rows.append((name, label, f"{s['prefill_tok_s']:.0f}", f"{s['decode_tok_s']:.1f}",
                         f"{s['decode_tok_s'] / r['speed_dynamic']['decode_tok_s']:.2f}"))
        for q in ("quality_fp32", "quality_fp16"):
            v = r[q]
            print(f"{name} {q[8:]}: top-1 agreement {v['top1_agreement']:.4f}, perplexity {v['ppl_bundle']:.3f} "
                  f"vs {v['ppl_reference']:.3f} ({v['ppl_bundle'] / v['ppl_reference'] - 1:+.2%})")
        print(f"{name} step graph, onnxruntime's mobile checker: {r['usability_step']}")
    print(plain_table([("model", "graph", "prefill tok/s", "decode tok/s", "× dynamic")] + rows))
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_name(), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
