"""`edgegen generate` and `edgegen chat`."""

from __future__ import annotations

import json
import sys
from typing import Any, Callable

import click

from edgegen.cli._app import main
from edgegen.core.options import DLLM_CACHES, DLLM_RULES


def decoding_options(func: Callable) -> Callable:
    """The options every generating command shares; they become one `GenerateOptions`."""
    options = [
        click.option("--max-tokens", "-m", default=256, show_default=True, type=int),
        click.option("--temp", "temperature", default=0.0, show_default=True, type=float, help="0 is greedy."),
        click.option("--top-p", default=1.0, show_default=True, type=float),
        click.option("--top-k", default=0, show_default=True, type=int, help="0 turns it off."),
        click.option("--min-p", default=0.0, show_default=True, type=float),
        click.option("--repetition-penalty", default=1.0, show_default=True, type=float),
        click.option("--seed", default=None, type=int, help="Makes sampling reproducible."),
        click.option("--stop", multiple=True, help="Stop at this text (repeatable)."),
        click.option("--draft", default=None,
                     help="Speculative decoding: a draft model (name or folder), q4 or q8 (a quantized copy "
                          "of MODEL), or prompt-lookup. Output stays the model's own."),
        click.option("--num-draft", default="auto", show_default=True, type=DRAFT_COUNT,
                     help="Tokens drafted per verification, or auto (chosen from measured costs; with --seed and "
                          "sampling, 4, so that the run repeats)."),
        click.option("--max-draft", default=8, show_default=True, type=int, help="The most --num-draft auto drafts."),
        click.option("--kv-bits", default=None, type=click.Choice(["16", "8", "4", "auto"]),
                     help="KV-cache precision (default: the runtime's float cache); auto picks the smallest "
                          "within 1% of its perplexity."),
        click.option("--kv-group-size", default=64, show_default=True, type=int,
                     help="Values per scale of a quantized KV cache (MLX)."),
        click.option("--ignore-eos", is_flag=True, help="Keep generating past the end-of-sequence token."),
        click.option("--block-size", default=None, type=int,
                     help="Diffusion LLMs: tokens per block (default: the model's)."),
        click.option("--threshold", default=None, type=float,
                     help="Diffusion LLMs: confidence that commits a token (threshold, dynamic rules)."),
        click.option("--rule", default=None, type=click.Choice(DLLM_RULES),
                     help="Diffusion LLMs: how many masked tokens each forward commits (default: the model's)."),
        click.option("--steps", default=None, type=int,
                     help="Diffusion LLMs: forwards per block for the quota and timestep rules."),
        click.option("--dllm-cache", default=None, type=click.Choice(DLLM_CACHES),
                     help="Diffusion LLMs: block (exact, block-causal models); dual, prefix (approximate, "
                          "bidirectional models); none."),
        click.option("--refresh-every", default=0, type=int,
                     help="Diffusion LLMs with a dual or prefix cache: refresh it every N forwards too."),
        click.option("--provider", default=None, help="ONNX Runtime provider: cpu, coreml, qnn, dml, cuda, auto."),
        click.option("--device", default=None, help="MLX device: gpu (Metal), cpu, auto."),
        click.option("--runtime", type=click.Choice(["onnx", "mlx"]), default=None,
                     help="Runtime to convert to when MODEL is not converted yet."),
        click.option("--pipeline", is_flag=True,
                     help="Under mlx.launch: pipeline parallel (each rank a run of layers) instead of tensor parallel."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


RUNTIME_FLAGS = ("provider", "device", "runtime", "pipeline")


def output_options(func: Callable) -> Callable:
    """Constrained output: the generated text follows a JSON schema, a regex or a grammar."""
    options = [
        click.option("--json-schema", default=None, metavar="FILE|JSON", callback=_json_or_file,
                     help="The output is JSON valid under this JSON Schema (a file, or the schema itself); "
                          "'{\"type\": \"object\"}' is any JSON object."),
        click.option("--regex", default=None, help="The whole output matches this regular expression."),
        click.option("--grammar", default=None, metavar="FILE", callback=_text_of_file,
                     help="The output follows this grammar: Lark, or GBNF as llama.cpp writes it."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _json_or_file(ctx: Any, param: Any, value: str | None) -> Any:
    if value is None or value.lstrip().startswith(("{", "true", "false")):
        return value
    return _text_of_file(ctx, param, value)


def _text_of_file(ctx: Any, param: Any, value: str | None) -> str | None:
    from pathlib import Path

    if value is None:
        return None
    try:
        return Path(value).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"{value} cannot be read ({getattr(exc, 'strerror', None) or exc})") from None


class _DraftCount(click.ParamType):
    name = "N|auto"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, int):
            return value
        if value.strip().lower() == "auto":
            return "auto"
        try:
            return int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a whole number nor auto", param, ctx)


DRAFT_COUNT = _DraftCount()


def split_options(opts: dict[str, Any]):
    """(GenerateOptions, runtime flags) from the parsed options; checked before anything loads."""
    flags = {k: opts.pop(k) for k in RUNTIME_FLAGS}
    return options_of(**opts), flags


def options_of(**given: Any):
    """GenerateOptions from flags' values (kv_bits as click gives it, text); an error names the
    flag the user typed, not the options object's field."""
    from edgegen.core.errors import ConfigError
    from edgegen.core.options import GenerateOptions

    if given.get("kv_bits") not in (None, "auto"):
        given["kv_bits"] = int(given["kv_bits"])
    try:
        return GenerateOptions.from_kwargs(**given)
    except ConfigError as exc:  # the options object names its fields; here the user typed flags
        field, _, rest = str(exc).partition(" ")
        if field in given:
            raise ConfigError(f"{FLAG_NAMES.get(field, '--' + field.replace('_', '-'))} {rest}") from None
        raise


FLAG_NAMES = {"temperature": "--temp"}  # fields whose flag is not the field's own name


def load_model(model: str | None, flags: dict[str, Any]):
    return load_text_model(model, flags["provider"], device=flags["device"], runtime=flags["runtime"],
                           parallel="pipeline" if flags.get("pipeline") else None)


def load_text_model(model: str | None, provider: str | None = None, **kwargs):
    """A language model for the text commands; an image model is a one-line error."""
    from edgegen.api import load
    from edgegen.core.errors import ConfigError
    from edgegen.images import ImageModel
    from edgegen.models import DEFAULT_MODEL

    model = model or DEFAULT_MODEL
    loaded = load(model, provider, **kwargs)
    if isinstance(loaded, ImageModel):
        raise ConfigError(f"{model} is an image model (VAR), not a language model; "
                          f"make images with `edgegen image {model}`")
    return loaded


def logprobs_json(tokenizer, logprobs) -> list[dict[str, Any]]:
    """Per generated token: its text, id, log-probability and the alternatives (`--json`)."""
    def text(i: int) -> str:
        return tokenizer.piece(i).decode("utf-8", errors="backslashreplace")

    return [{"token": text(lp.token), "id": lp.token, "logprob": round(lp.logprob, 6),
             "top_logprobs": [{"token": text(t), "id": t, "logprob": round(v, 6)} for t, v in lp.top]}
            for lp in logprobs]


def print_stats(stats) -> None:
    click.echo("=" * 10, err=True)
    for line in stats.lines():
        click.echo(line, err=True)


@main.command()
@click.argument("model", required=False)
@click.option("-p", "--prompt", required=True, help="The prompt ('-' reads standard input).")
@click.option("--raw", is_flag=True, help="Do not wrap the prompt in the model's chat template.")
@click.option("--json", "as_json", is_flag=True, help="Print ids, text and timing as JSON.")
@click.option("--logprobs", default=None, type=click.IntRange(0, 20), metavar="N",
              help="With --json: each token's log-probability and its N most likely alternatives.")
@output_options
@decoding_options
def generate(model: str | None, prompt: str, raw: bool, as_json: bool, **opts: Any) -> None:
    """Generate from MODEL (a converted folder or any source; default: the bundled tiny-chat)."""
    from edgegen.core.errors import ConfigError
    from edgegen.core.stats import GenerationStats

    if opts.get("logprobs") is not None and not as_json:
        raise ConfigError("--logprobs prints with --json; add --json")
    options, flags = split_options(opts)
    llm = load_model(model, flags)
    ids = prompt_ids(llm, read_prompt(prompt, llm), raw)
    if as_json:
        result = llm.generate(ids, options)
        out = {"prompt_ids": ids, "token_ids": result.token_ids, "text": result.text, "timing": result.stats.timing()}
        if options.output.logprobs is not None:
            out["logprobs"] = logprobs_json(llm.tokenizer, result.stats.logprobs)
        click.echo(json.dumps(out))
        return
    stats = GenerationStats()
    for piece in llm.stream(ids, options, stats=stats):
        click.echo(piece, nl=False)
    click.echo()
    print_stats(stats)


def _line_editing() -> None:
    """At a terminal, input() through GNU readline (where Python has it): arrow keys and history
    edit the line instead of reaching the model as escape codes, and a paste is read whole, past
    the terminal's 4,095-character line limit and, with bracketed paste, its newlines included."""
    if not sys.stdin.isatty():
        return
    try:
        import readline  # importing it is what hooks input()
    except ImportError:  # Windows' Python has none
        return
    readline.parse_and_bind("set enable-bracketed-paste on")  # CPython turns it off for its own REPL


@main.command()
@click.argument("model", required=False)
@click.option("--system", default=None, help="A system prompt.")
@output_options
@decoding_options
def chat(model: str | None, system: str | None, **opts: Any) -> None:
    """Chat with MODEL (default: the bundled tiny-chat). /reset clears, /quit leaves; Ctrl-C stops a reply."""
    from edgegen.core.errors import ContextOverflow

    options, flags = split_options(opts)
    llm = load_model(model, flags)
    start = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    _line_editing()
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
        try:
            answer = reply(llm, messages, options)
        except ContextOverflow as exc:  # the conversation outgrew the context: say so, keep the session
            messages.pop()
            click.echo(f"edgegen: error: {exc} (the conversation is too long for the model: "
                       "/reset starts a new one)", err=True)
            continue
        messages.append({"role": "assistant", "content": answer})


def reply(llm, messages: list[dict[str, str]], options) -> str:
    from edgegen.core.stats import GenerationStats

    stats, pieces = GenerationStats(), []
    stream = llm.stream_chat(messages, options, stats=stats)
    try:
        for piece in stream:
            pieces.append(piece)
            click.echo(piece, nl=False)
    except KeyboardInterrupt:
        stream.close()
        stats.finish_reason = "interrupted"
        click.echo(" [stopped]", nl=False)
    click.echo()
    print_stats(stats)
    return "".join(pieces)


def read_prompt(prompt: str, llm) -> str:
    """The prompt, or standard input for '-', read only as far as the model's context could use:
    an endless or huge input (`< /dev/zero`) is one line, not all memory."""
    from edgegen.api.text import text_limit
    from edgegen.core.errors import ContextOverflow

    if prompt != "-":
        return prompt
    context = llm.backend.context_length
    limit = text_limit(context)
    text = sys.stdin.read(limit + 1)
    if len(text) > limit:
        raise ContextOverflow(f"standard input holds more than {limit:,} characters, more than the model's context "
                              f"of {context:,} tokens could take; shorten the prompt")
    return text


def prompt_ids(llm, text: str, raw: bool) -> list[int]:
    if raw or not llm.tokenizer.chat_template:
        return llm.tokenizer.encode(text)
    return llm.tokenizer.encode_chat([{"role": "user", "content": text}])
