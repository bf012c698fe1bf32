"""`edgegen bench`: prefill and decode speed and peak memory of any model, in the spirit of
llama.cpp's `llama-bench` (a warm-up run, then repeats; mean ± standard deviation)."""

from __future__ import annotations

import json
import statistics
import sys
from typing import Any, Callable

import click

from edgegen.cli._app import main
from edgegen.cli.generate import decoding_options, load_model, split_options


def _int_list(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    try:
        numbers = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers such as 128,512, got {value!r}") from None
    if not numbers or min(numbers) < 1:
        raise click.BadParameter(f"expected positive integers, got {value!r}")
    return numbers


def _without(*names: str) -> Callable[[click.Command], click.Command]:
    """Drop shared options that make no sense here (bench sets the generated length itself)."""

    def strip(command: click.Command) -> click.Command:
        command.params = [p for p in command.params if p.name not in names]
        return command

    return strip


@_without("max_tokens", "stop")
@main.command()
@click.argument("model", required=False)
@click.option("--prompt-tokens", default="128,512,2048", show_default=True, callback=_int_list,
              help="Prompt lengths to time, comma-separated.")
@click.option("--gen-tokens", default="128", show_default=True, callback=_int_list,
              help="Tokens to generate per run (end of sequence ignored), comma-separated.")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(1, 1000), help="Timed runs per setting.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@decoding_options
def bench(model: str | None, prompt_tokens: list[int], gen_tokens: list[int], repeats: int, as_json: bool,
          **opts: Any) -> None:
    """Time prefill and decode of MODEL (default: the bundled tiny-chat) on random prompts of each
    length; prints a table of tokens per second and peak memory."""
    from tqdm import tqdm

    from edgegen.core.memory import check_fits

    options, flags = split_options(opts)
    llm = load_model(model, flags)
    settings = [(p, g) for p in prompt_tokens for g in gen_tokens]
    fits = [(p, g) for p, g in settings if p + g <= llm.manifest.context_length]
    if fits:  # the longest setting's KV cache, before any of it is allocated
        longest = max(p + g for p, g in fits)
        check_fits(int(longest * llm.kv_bytes_per_token(llm.kv_spec(options))),
                   f"a KV cache of {longest:,} tokens (prompt + generated)",
                   "give shorter --prompt-tokens / --gen-tokens or a lower --kv-bits")
    rows = []
    progress = tqdm(total=len(fits) * (repeats + 1), desc="bench", unit="run", leave=False,
                    file=sys.stderr)
    with progress as bar:
        for p, g in settings:
            if (p, g) not in fits:
                rows.append(_row(llm, model, p, g, [], skipped=f"{p + g} tokens exceed the context of "
                                                                f"{llm.manifest.context_length}"))
                continue
            bar.set_postfix_str(f"prompt {p}, gen {g}")
            rows.append(_row(llm, model, p, g, _measure(llm, options, p, g, repeats, bar.update)))
    label = _strategy(llm, options)
    for row in rows:
        row["strategy"] = label
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        click.echo(_table(rows))


def _measure(llm: Any, options: Any, prompt_len: int, gen: int, repeats: int, tick: Callable[[], Any]) -> list:
    """One warm-up run, then `repeats` timed runs, each from an empty KV cache (no prefix reuse)."""
    import numpy as np

    vocab = min(llm.tokenizer.vocab_size, llm.manifest.vocab_size)
    ids = np.random.default_rng(prompt_len).integers(0, vocab, prompt_len).tolist()
    runs = []
    for i in range(repeats + 1):
        llm.reset()
        stats = llm.generate(ids, options, max_tokens=gen if i else min(gen, 2), ignore_eos=True).stats
        tick()
        if i:
            runs.append(stats)
    llm.reset()
    return runs


def _spread(values: list[float]) -> dict[str, Any]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": round(mean, 2), "std": round(std, 2), "runs": [round(v, 2) for v in values]}


def _row(llm: Any, name: str | None, prompt_len: int, gen: int, runs: list, skipped: str = "") -> dict[str, Any]:
    from edgegen.models import DEFAULT_MODEL

    manifest = llm.manifest
    row: dict[str, Any] = {"model": name or DEFAULT_MODEL, "runtime": manifest.runtime,
                           "quantization": manifest.quantization.method, "prompt_tokens": prompt_len,
                           "gen_tokens": gen, "repeats": len(runs)}
    if skipped:
        return {**row, "skipped": skipped}
    return {**row, "prefill_tokens_per_s": _spread([s.prefill_tokens_per_s for s in runs]),
            "decode_tokens_per_s": _spread([s.decode_tokens_per_s for s in runs]),
            "tokens_per_forward": round(statistics.fmean(s.tokens_per_forward for s in runs), 3),
            "peak_memory_mb": round(max(s.peak_memory_mb for s in runs), 1)}


def _strategy(llm: Any, options: Any) -> str:
    """What the rows measured beyond plain decoding over the float cache: "plain", or e.g.
    "draft q4 γ auto, kv 8", "block diffusion"."""
    parts = []
    if llm.manifest.family == "dllm":
        parts.append("block diffusion")
    elif options.speculative.draft is not None:
        parts.append(f"draft {options.speculative.draft} γ {options.speculative.num_draft}")
    if options.kv.kv_bits is not None:
        parts.append(f"kv {options.kv.kv_bits}")
    return ", ".join(parts) or "plain"


def _table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table, as llama-bench prints; settings that do not fit are listed below it."""
    head = ["model", "runtime", "quant", "prompt", "gen", "prefill tok/s", "decode tok/s", "peak MB"]
    body = [[r["model"], r["runtime"], r["quantization"], str(r["prompt_tokens"]), str(r["gen_tokens"])]
            + [f"{r[k]['mean']:.1f} ± {r[k]['std']:.1f}" for k in ("prefill_tokens_per_s", "decode_tokens_per_s")]
            + [f"{r['peak_memory_mb']:.0f}"] for r in rows if "skipped" not in r]
    if any(r.get("strategy", "plain") != "plain" for r in rows):  # say what was measured, and what it gave
        head[3:3], head[-1:-1] = ["strategy"], ["tok/fwd"]
        measured = [r for r in rows if "skipped" not in r]
        for line, r in zip(body, measured):
            line[3:3], line[-1:-1] = [r["strategy"]], [f"{r['tokens_per_forward']:.2f}"]
    widths = [max(len(line[i]) for line in [head] + body) for i in range(len(head))]
    right = range(head.index("prompt"), len(head))  # the numbers

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if i in right else c.ljust(w)
                                  for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if i in right else "-") for i, w in enumerate(widths)) + "|"
    notes = [f"skipped prompt {r['prompt_tokens']}, gen {r['gen_tokens']}: {r['skipped']}" for r in rows
             if "skipped" in r]
    return "\n".join(([line(head), rule] + [line(cells) for cells in body] if body else []) + notes)
