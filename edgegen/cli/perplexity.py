"""`edgegen perplexity`: token-by-token evaluation through the KV cache."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Iterable

import click

from edgegen.cli._app import main


@main.command()
@click.argument("model", required=False)
@click.option("--text", "text_file", type=click.Path(path_type=Path, dir_okay=False),
              help="A UTF-8 text file (default: a bundled held-out page of Python's documentation).")
@click.option("--kv-bits", default=None, type=click.Choice(["16", "8", "4", "auto"]),
              help="KV-cache precision (default: the runtime's float cache).")
@click.option("--kv-group-size", default=64, show_default=True, type=int)
@click.option("--context", default=None, type=int, help="Window length in tokens (default: the model's context).")
@click.option("--max-tokens", default=None, type=int,
              help="Read at most this many tokens of the text (the first has no context: N - 1 are scored).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option("--provider", default=None, help="ONNX Runtime provider.")
@click.option("--device", default=None, help="MLX device.")
@click.option("--runtime", type=click.Choice(["onnx", "mlx"]), default=None)
def perplexity(model: str | None, text_file: Path | None, kv_bits: str | None, kv_group_size: int,
               context: int | None, max_tokens: int | None, as_json: bool, **flags: Any) -> None:
    """Perplexity of MODEL (default: tiny-chat) on a text, each token fed one at a time through the
    KV cache, with its standard error, KV bytes per token and peak memory."""
    from tqdm import tqdm

    from edgegen.api import peak_rss_mb
    from edgegen.cli.generate import load_model, options_of
    from edgegen.core.errors import ConfigError
    from edgegen.core.memory import check_fits
    from edgegen.decoding.perplexity import perplexity as measure

    options = options_of(kv_bits=kv_bits, kv_group_size=kv_group_size)
    if max_tokens is not None and max_tokens < 2:
        raise ConfigError("--max-tokens must be at least 2")
    pieces = _pieces(text_file)
    llm = load_model(model, flags)
    if llm.manifest.family != "ar":
        raise ConfigError(f"perplexity scores next-token predictions, which {llm.folder.name}, a diffusion LLM, does "
                          "not make; score an autoregressive model")
    kv = llm.kv_spec(options)
    window = llm.backend.context_length if context is None else max(min(context, llm.backend.context_length), 0)
    check_fits(int(window * llm.kv_bytes_per_token(kv)), f"a KV cache of {window:,} tokens",
               "give a smaller --context or a lower --kv-bits")
    vocab = llm.backend.vocab_size
    ids = (i for i in llm.tokenizer.encode_stream(pieces) if i < vocab)  # read and tokenized as scored
    ids = ids if max_tokens is None else itertools.islice(ids, max_tokens)
    with tqdm(total=None if max_tokens is None else max_tokens - 1, desc="perplexity", unit="tok", leave=False,
              disable=None) as bar:
        result = measure(llm.backend, ids, kv=kv, context=context, on_token=bar.update)
    report = {"perplexity": round(result.perplexity, 4), "stderr": round(result.stderr, 4), "tokens": result.tokens,
              "kv_bits": None if kv is None else kv.bits, "kv_bytes_per_token": _whole(llm.kv_bytes_per_token(kv)),
              "peak_memory_mb": round(peak_rss_mb(), 1)}
    if as_json:
        click.echo(json.dumps(report))
        return
    bits = "float" if kv is None else f"{kv.bits}-bit"
    click.echo(f"perplexity {report['perplexity']:.3f} ± {report['stderr']:.3f} over {result.tokens} tokens "
               f"(KV cache {bits}, {report['kv_bytes_per_token']:,.0f} bytes per token); "
               f"peak memory {report['peak_memory_mb'] / 1024:.3f} GB")


def _whole(x: float) -> float | int:
    return int(x) if float(x).is_integer() else x


def _pieces(path: Path | None) -> Iterable[str]:
    """The text to score as a stream of pieces: a file (or pipe) is read only as far as scoring goes."""
    from edgegen.core.data import HELDOUT, bundled_text
    from edgegen.core.text_stream import read_pieces

    if path is None:
        return [bundled_text(HELDOUT)]
    pieces = read_pieces(path)
    return itertools.chain([next(pieces, "")], pieces)  # a missing or unreadable file fails here, before loading
