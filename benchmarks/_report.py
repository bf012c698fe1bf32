"""Tables (console and Markdown) and the JSON file for the autoregressive benchmark."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import time
from pathlib import Path

PACKAGES = ("edgegen", "onnxruntime", "onnxruntime-genai", "onnx-ir", "llama-cpp-python", "gguf",
            "mlx", "mlx-lm", "torch", "transformers", "tokenizers", "numpy")
FP32_REFERENCES = ("ort-genai-fp32", "edgegen-onnx-fp32", "mlx-lm-fp32")
HEADERS = ("engine", "prefill tok/s", "decode tok/s", "peak RSS MB", "prefill ×", "decode ×",
           "greedy match")


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def add_token_agreement(results: dict[str, dict]) -> str | None:
    """Leading greedy tokens each engine shares with an fp32 peer: a cheap correctness check."""
    ok = {n: r for n, r in results.items() if r.get("status") == "ok"}
    ref = next((n for n in FP32_REFERENCES if n in ok), None)
    if ref is None:
        return None
    ref_tokens = ok[ref]["tokens"]
    for result in ok.values():
        same = 0
        for a, b in zip(result["tokens"], ref_tokens):
            if a != b:
                break
            same += 1
        result["greedy_match"] = {"reference": ref, "leading_tokens": same,
                                  "of": len(ref_tokens)}
    return ref


def ratio(value: float, base: float | None) -> str:
    return f"{value / base:.2f}" if base else "n/a"


def rows(results: dict[str, dict], baseline: str) -> list[tuple[str, ...]]:
    base = results.get(baseline, {})
    base_pre = base.get("prefill_tok_s") if base.get("status") == "ok" else None
    base_dec = base.get("decode_tok_s") if base.get("status") == "ok" else None
    out = []
    for name, r in results.items():
        if r.get("status") != "ok":
            text = r.get("reason", "") if r.get("status") == "skipped" else (
                "failed: " + r.get("reason", "").strip().splitlines()[-1][:120]
                if r.get("reason") else "failed")
            out.append((name, text, "", "", "", "", ""))
            continue
        match = r.get("greedy_match")
        out.append((
            name,
            f"{r['prefill_tok_s']:.1f}",
            f"{r['decode_tok_s']:.1f}",
            f"{r['peak_rss_mb']:.0f}",
            ratio(r["prefill_tok_s"], base_pre),
            ratio(r["decode_tok_s"], base_dec),
            f"{match['leading_tokens']}/{match['of']}" if match else "",
        ))
    return out


def console_table(table: list[tuple[str, ...]]) -> str:
    measured = [r for r in table if r[2]]
    widths = [max([len(h), *(len(r[i]) for r in measured)]) for i, h in enumerate(HEADERS)]
    widths[0] = max([widths[0], *(len(r[0]) for r in table)])

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(HEADERS), line(tuple("-" * w for w in widths))]
    for r in table:
        out.append(line(r) if r[2] else f"{r[0].ljust(widths[0])}  {r[1]}")
    return "\n".join(out)


def markdown_table(table: list[tuple[str, ...]]) -> str:
    out = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join(["---"] + ["---:"] * 6) + "|"]
    for r in table:
        cells = (f"`{r[0]}`", *r[1:]) if r[2] else (f"`{r[0]}`", r[1], "", "", "", "", "")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def plain_table(rows: list[tuple[str, ...]]) -> str:
    """Any table whose first row is its header, aligned for the console."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def plain_markdown(rows: list[tuple[str, ...]]) -> str:
    """Any table whose first row is its header, as Markdown (first column left, the rest right)."""
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join(["---"] + ["---:"] * (len(rows[0]) - 1)) + "|"]
    return "\n".join(out + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows[1:]])


def legend(baseline: str, ref: str | None, meta: dict) -> str:
    a = meta["args"]
    lines = [
        f"Qwen2.5-0.5B-shaped checkpoint (random weights), {a['prompt_tokens']}-token prompt, "
        f"{a['new_tokens']} greedy tokens (EOS ignored), CPU, {a['threads']} threads; "
        f"median of {a['repeats']} runs after 1 warm-up; each engine in its own process.",
        f"prefill tok/s = prompt tokens / time to first token; decode tok/s = tokens after the "
        f"first / their time; peak RSS = ru_maxrss of the engine's process; × = ratio to "
        f"`{baseline}`.",
    ]
    if ref:
        lines.append(f"greedy match = leading generated tokens identical to `{ref}`.")
    return "\n".join(lines)


def noise_warnings(results: dict[str, dict], limit: float = 0.15) -> str:
    """Name the engines that shared the CPU with other processes while being measured."""
    noisy = {n: r["others_cpu_share"] for n, r in results.items()
             if r.get("status") == "ok" and (r.get("others_cpu_share") or 0) > limit}
    if not noisy:
        return ""
    names = ", ".join(f"{n} ({share:.0%})" for n, share in noisy.items())
    return (f"WARNING: other processes used part of the CPU while measuring {names}; "
            "those figures are low. Rerun on an idle machine.")


def metadata(args: dict, ckpt: Path) -> dict:
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count(), "python": platform.python_version()},
        "versions": versions(),
        "checkpoint": str(ckpt),
        "args": args,
    }


def write_json(path: Path, meta: dict, results: dict[str, dict], baseline: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "baseline": baseline, "results": results},
                               indent=2) + "\n")


def render(results: dict[str, dict], meta: dict, baseline: str) -> str:
    ref = add_token_agreement(results)
    table = rows(results, baseline)
    parts = [console_table(table), noise_warnings(results),
             "Markdown:\n\n" + markdown_table(table) + "\n\n" + legend(baseline, ref, meta)]
    return "\n\n".join(p for p in parts if p)


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), for the header every benchmark prints."""
    import platform
    from pathlib import Path

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
