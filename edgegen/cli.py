"""The `edgegen` command: convert, generate, chat, info. Thin: parse, call the API, print."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable

import click

from edgegen.core.errors import EdgegenError


def _friendly(func: Callable) -> Callable:
    """User errors become one line on stderr and exit code 2, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except EdgegenError as exc:
            click.echo(f"edgegen: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("edgegen: interrupted", err=True)
            sys.exit(130)

    return wrapper


def _sampling_options(func: Callable) -> Callable:
    options = [
        click.option("--max-tokens", "-m", default=256, show_default=True, type=click.IntRange(min=1)),
        click.option("--temp", "temperature", default=0.0, show_default=True, type=float, help="0 is greedy."),
        click.option("--top-p", default=1.0, show_default=True, type=float),
        click.option("--top-k", default=0, show_default=True, type=int, help="0 turns it off."),
        click.option("--min-p", default=0.0, show_default=True, type=float),
        click.option("--repetition-penalty", default=1.0, show_default=True, type=float),
        click.option("--seed", default=None, type=int, help="Makes sampling reproducible."),
        click.option("--stop", multiple=True, help="Stop at this text (repeatable)."),
        click.option("--provider", default=None, help="ONNX Runtime provider: cpu, coreml, qnn, dml, cuda, auto."),
        click.option("--device", default=None, help="MLX device: gpu (Metal), cpu, auto."),
        click.option("--runtime", type=click.Choice(["onnx", "mlx"]), default=None,
                     help="Runtime to convert to when MODEL is not converted yet."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgegen")
def main() -> None:
    """Run generative models on the device in front of you: MLX on Apple silicon, ONNX Runtime on
    CPUs and NPUs."""


@main.command()
@click.argument("src")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--runtime", type=click.Choice(["mlx", "onnx"]), default="onnx", show_default=True)
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True)
@click.option("--quant", type=click.Choice(["none", "q8", "q4"]), default="none", show_default=True)
@click.option("--group-size", type=click.Choice(["32", "64", "128"]), default=None,
              help="Quantization group size (default 32 for ONNX, 64 for MLX).")
@click.option("--revision", default=None, help="Hub revision (branch, tag or commit).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@_friendly
def convert(src: str, out: Path, runtime: str, dtype: str, quant: str, group_size: str | None,
            revision: str | None, force: bool) -> None:
    """Convert SRC (a Hugging Face folder, hub repo id or bundled model name) into OUT."""
    from edgegen.models import convert_source

    path = convert_source(src, out, runtime=runtime, dtype=dtype, quant=quant, revision=revision, force=force,
                          group_size=int(group_size) if group_size else None)
    click.echo(f"wrote {path}", err=True)


@main.command()
@click.argument("model", required=False)
@_friendly
def info(model: str | None) -> None:
    """Describe a converted MODEL folder."""
    from edgegen.core.manifest import Manifest
    from edgegen.models import locate

    manifest = Manifest.read(model if model else locate(None))
    width = max(len(label) for label, _ in manifest.describe())
    for label, value in manifest.describe():
        click.echo(f"{label:<{width}}  {value}")


@main.command()
@click.argument("model", required=False)
@click.option("-p", "--prompt", required=True, help="The prompt ('-' reads standard input).")
@click.option("--raw", is_flag=True, help="Do not wrap the prompt in the model's chat template.")
@click.option("--json", "as_json", is_flag=True, help="Print ids, text and timing as JSON.")
@_sampling_options
@_friendly
def generate(model: str | None, prompt: str, raw: bool, as_json: bool, **opts: Any) -> None:
    """Generate from MODEL (a converted folder; default: the bundled tiny-chat)."""
    from edgegen.decoding.autoregressive import GenerationStats

    llm = _load(model, opts)
    text = sys.stdin.read() if prompt == "-" else prompt
    ids = _prompt_ids(llm, text, raw)
    sampling = _sampling(opts)
    if as_json:
        result = llm.generate(ids, **sampling)
        stats = result.stats
        click.echo(json.dumps({"prompt_ids": ids, "token_ids": result.token_ids, "text": result.text,
                               "timing": _stats_dict(stats)}))
        return
    stats = GenerationStats()
    for piece in llm.stream(ids, stats=stats, **sampling):
        click.echo(piece, nl=False)
    click.echo()
    _print_stats(stats)


@main.command()
@click.argument("model", required=False)
@click.option("--system", default=None, help="A system prompt.")
@_sampling_options
@_friendly
def chat(model: str | None, system: str | None, **opts: Any) -> None:
    """Chat with MODEL (default: the bundled tiny-chat). /reset clears, /quit leaves; Ctrl-C stops a reply."""
    llm = _load(model, opts)
    sampling = _sampling(opts)
    start = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    click.echo("edgegen chat: /reset clears the conversation, /quit leaves, Ctrl-C stops a reply.", err=True)
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            click.echo()
            return
        except KeyboardInterrupt:
            click.echo("\n(/quit or Ctrl-D leaves)", err=True)
            continue
        if line.strip() in ("/quit", "/exit"):
            return
        if line.strip() == "/reset":
            messages = list(start)
            llm.reset()
            click.echo("(conversation cleared)", err=True)
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        messages.append({"role": "assistant", "content": _reply(llm, messages, sampling)})


def _reply(llm, messages: list[dict[str, str]], sampling: dict[str, Any]) -> str:
    from edgegen.decoding.autoregressive import GenerationStats

    stats, pieces = GenerationStats(), []
    stream = llm.stream_chat(messages, stats=stats, **sampling)
    try:
        for piece in stream:
            pieces.append(piece)
            click.echo(piece, nl=False)
    except KeyboardInterrupt:
        stream.close()
        stats.finish_reason = "interrupted"
        click.echo(" [stopped]", nl=False)
    click.echo()
    _print_stats(stats)
    return "".join(pieces)


def _load(model: str | None, opts: dict[str, Any]):
    from edgegen.models import open_model

    return open_model(model, runtime=opts.pop("runtime"), provider=opts.pop("provider"), device=opts.pop("device"))


def _sampling(opts: dict[str, Any]) -> dict[str, Any]:
    keys = ("max_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed", "stop")
    return {k: opts[k] for k in keys}


def _prompt_ids(llm, text: str, raw: bool) -> list[int]:
    if raw or not llm.tokenizer.chat_template:
        return llm.tokenizer.encode(text)
    return llm.tokenizer.encode_chat([{"role": "user", "content": text}])


def _stats_dict(stats) -> dict[str, Any]:
    return {"prompt_tokens": stats.prompt_tokens, "prefill_tokens_per_s": round(stats.prefill_tokens_per_s, 2),
            "generated_tokens": stats.generated_tokens, "decode_tokens_per_s": round(stats.decode_tokens_per_s, 2),
            "peak_memory_mb": round(stats.peak_memory_mb, 1), "finish_reason": stats.finish_reason}


def _print_stats(stats) -> None:
    click.echo("=" * 10, err=True)
    click.echo(f"Prompt: {stats.prompt_tokens} tokens, {stats.prefill_tokens_per_s:.1f} tokens-per-sec", err=True)
    click.echo(f"Generation: {stats.generated_tokens} tokens, {stats.decode_tokens_per_s:.1f} tokens-per-sec",
               err=True)
    click.echo(f"Peak memory: {stats.peak_memory_mb / 1024:.3f} GB", err=True)
