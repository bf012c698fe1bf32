"""Quantized KV caches at long context: KV bytes, peak memory and decode speed, one run.

    python benchmarks/bench_kv.py [--contexts 1024,4096,16384] [--new-tokens 32] [--mlx-contexts 1024]

On the Qwen2.5-0.5B-shaped checkpoint (random weights) with q4 weights, for each context length:
a prompt of that many tokens, then `--new-tokens` greedy tokens (EOS ignored), one configuration per
child process (its own peak RSS): edgegen ONNX with the float (fp32), fp16, int8 and int4 caches,
edgegen MLX (CPU backend: only the short contexts, its prefill is a few tokens per second here),
and llama.cpp Q4_0 through llama-cpp-python with f16, q8_0 and q4_0 K and V (flash attention, which
llama.cpp needs for a quantized V). KV bytes are the cache's own arithmetic at prompt + new tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _checkpoint import prompt_ids
from _common import ensure_checkpoint_in_child, log, peak_rss_mb
from _report import plain_markdown, plain_table, versions

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "bench_kv.json"
MARK = "@@kv-result "
EDGEGEN_KV = {"float": None, "16": 16, "8": 8, "4": 4}
LLAMA_KV = {"f16": 1, "q8_0": 8, "q4_0": 2}  # ggml type ids
LLAMA_BYTES = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}  # per value, block scales included


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--contexts", default="1024,4096,16384")
    p.add_argument("--mlx-contexts", default="1024", help="MLX runs on the CPU here: keep these short")
    p.add_argument("--mlx-fill-contexts", default="",
                   help="MLX contexts whose cache is filled with random keys and values instead of a prefill "
                        "(decode speed and memory only: MLX's CPU backend prefills at a few tokens per second)")
    p.add_argument("--onnx-fill-contexts", default="",
                   help="ONNX contexts whose cache is filled with random keys and values instead of a prefill "
                        "(decode speed only, in minutes instead of the 16k prefill's quarter hour per cache)")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--engines", default="onnx,mlx,llamacpp")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--child-timeout", type=float, default=0,
                   help="stop a configuration after this many seconds (listed as stopped); 0: no limit")
    p.add_argument("--merge", action="store_true",
                   help="keep the rows of (engine, context) pairs not run from the existing --out file")
    p.add_argument("--child", nargs=4, metavar=("ENGINE", "KV", "CONTEXT", "ARTEFACT"), help=argparse.SUPPRESS)
    p.add_argument("--fill", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args()


# ------------------------------------------------------------------ children

def child(args: argparse.Namespace) -> dict:
    engine, kv, context, artefact = args.child
    ckpt = ensure_checkpoint_in_child()
    ids = prompt_ids(ckpt, int(context), 0)
    if engine == "llamacpp":
        return llamacpp_child(Path(artefact), kv, ids, args)
    return edgegen_child(Path(artefact), kv, ids, args)


def edgegen_child(folder: Path, kv: str, ids: list[int], args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(HERE.parent))
    import edgegen

    model = edgegen.load(str(folder), threads=args.threads)
    bits = EDGEGEN_KV[kv]
    model.generate(ids[:64], max_tokens=2, kv_bits=bits, ignore_eos=True)  # warm-up
    model.reset()
    if args.fill:
        fill_with_random_kv(model.session, len(ids) - 1)
        model.session.tokens = list(ids[:-1])  # so that only the last prompt token is run
    t0 = time.perf_counter()
    g = model.generate(ids, max_tokens=args.new_tokens, kv_bits=bits, ignore_eos=True)
    wall = time.perf_counter() - t0
    spec = model.session.kv
    prefill = None if args.fill else g.stats.prefill_tokens_per_s
    return {"prefill_tok_s": prefill, "decode_tok_s": g.stats.decode_tokens_per_s, "filled": args.fill,
            "kv_bytes": model.kv_bytes_per_token(spec) * (len(ids) + args.new_tokens),
            "kv_allocated_bytes": getattr(model.session.cache, "nbytes", None), "wall_s": wall,
            "tokens": g.token_ids}


def fill_with_random_kv(session, n: int, chunk: int = 512) -> None:
    """Write `n` random (keys, values) into the cache: the cost of a decode step over a cache does
    not depend on what it holds. ONNX: random stored values (floats, int8, packed int4 bytes)
    straight into the buffers GroupQueryAttention reads. MLX: through the cache's own write path
    (quantized caches quantize them as they would a prefill's); its private `_write` is used: no
    public API writes raw keys and values, and none should."""
    cache, model = session.cache, session.model
    if hasattr(cache, "buffers"):  # ONNX
        import numpy as np

        rng = np.random.default_rng(0)
        cache.reserve(n)
        for k, v in cache.buffers:
            for buf in (k, v):
                part = buf[:, :, :n]
                if buf.dtype.kind == "f":
                    part[...] = rng.standard_normal(part.shape).astype(buf.dtype)
                else:
                    part[...] = rng.integers(np.iinfo(buf.dtype).min, np.iinfo(buf.dtype).max, part.shape, buf.dtype)
        cache.advance(n)
        return
    import mlx.core as mx

    c = model.config
    for start in range(0, n, chunk):
        length = min(chunk, n - start)
        for layer in range(c.num_hidden_layers):
            keys = getattr(cache, "_keys", [None] * (layer + 1))[layer]  # a float cache: keep its dtype
            dtype = keys.dtype if keys is not None else mx.float16
            k, v = (mx.random.normal((1, c.num_key_value_heads, length, c.head_dim)).astype(dtype) for _ in range(2))
            cache._write(layer, k, v)  # noqa: SLF001
        mx.eval([a for a in getattr(cache, "_keys", []) + getattr(cache, "_values", []) if a is not None])
        cache.advance(length)


def llamacpp_child(folder: Path, kv: str, ids: list[int], args: argparse.Namespace) -> dict:
    import llama_cpp
    from llama_cpp import Llama

    from _llamacpp import GGUF_NAME

    n_ctx = len(ids) + args.new_tokens + 16
    llm = Llama(str(folder / GGUF_NAME), n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_threads=args.threads,
                n_threads_batch=args.threads, type_k=LLAMA_KV[kv], type_v=LLAMA_KV[kv], flash_attn=True, verbose=False)
    sampler = llama_cpp.llama_sampler_init_greedy()
    ctx = llm._ctx.ctx  # noqa: SLF001 (the raw llama_context the sampler reads logits from)
    t0 = time.perf_counter()
    llm.eval(ids)
    t1 = time.perf_counter()
    tokens = []
    for _ in range(args.new_tokens):
        tokens.append(int(llama_cpp.llama_sampler_sample(sampler, ctx, -1)))
        llm.eval([tokens[-1]])
    t2 = time.perf_counter()
    c = json.loads((ensure_checkpoint_in_child() / "config.json").read_text())
    values = c["num_hidden_layers"] * 2 * c["num_key_value_heads"] * (c["hidden_size"] // c["num_attention_heads"])
    return {"prefill_tok_s": len(ids) / (t1 - t0), "decode_tok_s": (args.new_tokens - 1) / (t2 - t1),
            "kv_bytes": values * LLAMA_BYTES[kv] * (len(ids) + args.new_tokens), "wall_s": t2 - t0, "tokens": tokens}


# ------------------------------------------------------------------ parent

def prepare(engine: str, ckpt: Path) -> Path:
    if engine == "llamacpp":
        import _llamacpp

        return _llamacpp.prepare(ckpt)
    import _edgegen

    return _edgegen.prepare(ckpt, f"edgegen-{engine}-q4", engine, "q4")


def run_child(engine: str, kv: str, context: int, artefact: Path, args: argparse.Namespace,
              fill: bool = False) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", engine, kv, str(context), str(artefact),
           "--new-tokens", str(args.new_tokens), "--threads", str(args.threads)] + (["--fill"] if fill else [])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env, timeout=args.child_timeout or None)
    except subprocess.TimeoutExpired:
        return {"status": "stopped", "reason": f"stopped after {args.child_timeout:.0f} s (too slow here)"}
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    return {"status": "failed", "reason": f"child exited with {proc.returncode}"}


def main() -> int:
    args = parse_args()
    if args.child:
        try:
            result = {"status": "ok", **child(args)}
        except Exception as exc:  # reported in the table; the benchmark goes on
            result = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
        result["peak_rss_mb"] = peak_rss_mb()
        print(MARK + json.dumps(result), flush=True)
        return 0
    ckpt = ensure_checkpoint_in_child()
    mlx_contexts = ",".join(c for c in (args.mlx_contexts, args.mlx_fill_contexts) if c)
    onnx_contexts = ",".join(c for c in (args.contexts, args.onnx_fill_contexts) if c)
    plan = {"onnx": (EDGEGEN_KV, onnx_contexts), "mlx": (EDGEGEN_KV, mlx_contexts),
            "llamacpp": (LLAMA_KV, args.contexts)}
    filled = {(engine, int(c)) for engine, contexts in (("mlx", args.mlx_fill_contexts), ("onnx", args.onnx_fill_contexts))
              for c in contexts.split(",") if c}
    results = []
    for engine in args.engines.split(","):
        kvs, contexts = plan[engine]
        try:
            artefact = prepare(engine, ckpt)
        except Exception as exc:  # noqa: BLE001
            log(f"== {engine}: failed to prepare ({exc})")
            results.append({"engine": engine, "status": "failed", "reason": str(exc)})
            continue
        for context in (int(c) for c in contexts.split(",") if c):
            for kv in kvs:
                log(f"== {engine} kv={kv} context={context} ...")
                r = run_child(engine, kv, context, artefact, args, fill=(engine, context) in filled)
                r.update(engine=engine, kv=kv, context=context)
                r.pop("tokens", None)
                results.append(r)
                log(f"   {r.get('decode_tok_s', 0):.1f} tok/s decode, {r.get('peak_rss_mb', 0):.0f} MB peak, "
                    f"{r.get('kv_bytes', 0) / 2**20:.1f} MB KV ({r['status']})")
    if args.merge and args.out.exists():  # the earlier run's rows for what this run left out
        ran = {(r.get("engine"), r.get("context")) for r in results}
        kept = [r for r in json.loads(args.out.read_text())["results"] if (r.get("engine"), r.get("context")) not in ran]
        results = sorted(kept + results, key=lambda r: (["onnx", "mlx", "llamacpp"].index(r["engine"]),
                                                         r.get("context", 0)))
    print_report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()}, "versions": versions(),
                                    "results": results}, indent=1) + "\n")
    print(f"\nresults written to {args.out}")
    return 0


def print_report(results: list[dict]) -> None:
    float16 = {(r["engine"], r["context"]): r.get("kv_bytes") for r in results if r.get("kv") in ("16", "f16")}
    base = {(r["engine"], r["context"]): r.get("decode_tok_s") for r in results if r.get("kv") in ("float", "f16")}
    header = ("engine", "context", "KV", "KV MB", "of fp16", "peak RSS MB", "prefill tok/s", "decode tok/s", "× float")
    table = [header]
    for r in results:
        if r.get("status") != "ok":
            table.append((r["engine"], str(r.get("context", "")), r.get("kv", ""), r.get("reason", r["status"])[:60],
                          "", "", "", "", ""))
            continue
        key = (r["engine"], r["context"])
        table.append((r["engine"], str(r["context"]), r["kv"], f"{r['kv_bytes'] / 2**20:.1f}",
                      f"{r['kv_bytes'] / float16[key]:.0%}" if float16.get(key) else "",
                      f"{r['peak_rss_mb']:.0f}", "filled" if r.get("filled") else f"{r['prefill_tok_s']:.0f}",
                      f"{r['decode_tok_s']:.1f}",
                      f"{r['decode_tok_s'] / base[key]:.2f}" if base.get(key) else ""))
    print("\n" + plain_table(table) + "\n\n" + plain_markdown(table))


if __name__ == "__main__":
    sys.exit(main())
