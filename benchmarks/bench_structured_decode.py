"""What a JSON schema or a forced tool call costs a whole generation: tiny-chat's decode tok/s
with and without the constraint, plain and speculative, in one run on this CPU.

    python benchmarks/bench_structured_decode.py [--runs 5] [--runtime onnx] [--json PATH]

Each setting replies to the same chat prompt (greedy, at most 160 tokens, ending at EOS or where
the grammar ends) once untimed, then `--runs` times; the table gives the median decode tok/s, the
tokens generated and tokens per forward, and each constrained setting's ratio to the same
strategy unconstrained. The texts differ (a constrained reply is JSON), so the ratio is the
throughput of steps, not of one answer. The mask's own cost is in bench_grammar.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from _report import cpu_name, plain_table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

SCHEMA = {
    "type": "object",
    "properties": {
        "module": {"type": "string", "minLength": 2, "maxLength": 16},
        "kind": {"enum": ["library", "builtin", "package"]},
        "functions": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 1, "maxItems": 3},
        "meta": {"type": "object", "properties": {"stable": {"type": "boolean"},
                                                   "since": {"type": "integer", "minimum": 1990, "maximum": 2030}},
                 "required": ["stable", "since"], "additionalProperties": False},
    },
    "required": ["module", "kind", "functions", "meta"],
    "additionalProperties": False,
}
TOOLS = [{"type": "function", "function": {"name": "describe_module", "description": "Describe a Python module",
                                           "parameters": SCHEMA}}]
ASK = [{"role": "user", "content": "Describe the json module as a JSON object."}]
STRATEGIES = {"plain": {}, "speculative (tiny-draft)": {"draft": "tiny-draft", "num_draft": 4},
              "speculative (prompt lookup)": {"draft": "prompt-lookup", "num_draft": 4}}
CONSTRAINTS = {"none": {}, "JSON schema": {"json_schema": SCHEMA},
               "forced tool call": {"tools": TOOLS, "tool_choice": "required"}}




def measure(model, kwargs: dict, runs: int) -> dict:
    model.chat(ASK, max_tokens=160, **kwargs)  # warm-up (and the draft model's load)
    replies = [model.chat(ASK, max_tokens=160, **kwargs) for _ in range(runs)]
    last = replies[-1].stats
    return {"decode_tok_s": statistics.median(r.stats.decode_tokens_per_s for r in replies),
            "tokens": last.generated_tokens, "tokens_per_forward": last.tokens_per_forward,
            "finish": last.finish_reason}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--runtime", default="onnx", choices=["onnx", "mlx"])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    import edgegen

    model = edgegen.load("tiny-chat", runtime=args.runtime)
    print(f"CPU: {cpu_name()}; tiny-chat on {args.runtime}; median of {args.runs} runs")
    rows = []
    for sname, strategy in STRATEGIES.items():
        base = None
        for cname, constraint in CONSTRAINTS.items():
            r = measure(model, {**strategy, **constraint}, args.runs)
            base = base or r["decode_tok_s"]
            rows.append({"strategy": sname, "constraint": cname, **r, "ratio": r["decode_tok_s"] / base})
    print(plain_table([("strategy", "constraint", "decode tok/s", "tokens", "tokens/forward", "finish",
                        "× unconstrained")] + [
        (r["strategy"], r["constraint"], f"{r['decode_tok_s']:.0f}", str(r["tokens"]),
         f"{r['tokens_per_forward']:.2f}", r["finish"], f"{r['ratio']:.2f}") for r in rows]))
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_name(), "runtime": args.runtime, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
