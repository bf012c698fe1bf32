"""`edgegen complete` (k drafts from one pass) and `edgegen ngram build` (the store it reads)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import click

from edgegen.cli._app import main
from edgegen.cli.generate import output_options


@main.command()
@click.argument("model", required=False)
@click.option("-p", "--prompt", required=True, help="The text to complete ('-' reads standard input).")
@click.option("--drafts", "-k", default=3, show_default=True, type=int, help="How many drafts.")
@click.option("--ngram", default=None, help="An n-gram store folder, or none (default: the model's own store).")
@click.option("--ngram-weight", default=None, type=float, help="α, the n-gram store's weight (default: per k).")
@click.option("--max-tokens", "-m", default=16, show_default=True, type=int)
@click.option("--chat", is_flag=True, help="Wrap the prompt in the chat template (default: raw text).")
@click.option("--stream", is_flag=True, help="Show the drafts as they grow.")
@click.option("--json", "as_json", is_flag=True, help="Print drafts and timing as JSON.")
@click.option("--kv-bits", default=None, type=click.Choice(["16", "8", "4"]), help="KV-cache precision.")
@click.option("--provider", default=None, help="ONNX Runtime provider.")
@click.option("--device", default=None, help="MLX device.")
@click.option("--runtime", type=click.Choice(["onnx", "mlx"]), default=None)
@output_options
def complete(model: str | None, prompt: str, drafts: int, ngram: str | None, ngram_weight: float | None,
             max_tokens: int, chat: bool, stream: bool, as_json: bool, kv_bits: str | None,
             json_schema: Any, regex: str | None, grammar: str | None, **flags: Any) -> None:
    """Complete the prompt with K drafts from one pass (Superposed Decoding), as autocomplete does."""
    from edgegen.cli.generate import load_model, options_of, print_stats, prompt_ids, read_prompt

    options = options_of(drafts=drafts, ngram=ngram, ngram_weight=ngram_weight, max_tokens=max_tokens, kv_bits=kv_bits,
                         json_schema=json_schema, regex=regex, grammar=grammar)
    llm = load_model(model, flags)
    ids = prompt_ids(llm, read_prompt(prompt, llm), raw=not chat)
    result = None
    for result in llm.stream_complete(ids, options):
        if stream and not as_json:
            click.echo(" | ".join(d.text.replace("\n", "⏎") for d in result.drafts), err=True)
    if as_json:
        timing = {**result.stats.timing(), "drafts": len(result.drafts),
                  "seconds_per_draft": round(result.seconds_per_draft, 4), "ngram_store": result.ngram_store}
        click.echo(json.dumps({"drafts": [{"text": d.text, "token_ids": d.token_ids, "score": round(d.score, 4),
                                           "perplexity": round(d.perplexity, 3), "finished": d.finished}
                                          for d in result.drafts], "timing": timing}))
        return
    for i, d in enumerate(result.drafts, 1):
        click.echo(f"{i}. {d.text!r}  (score {d.score:.3f}, perplexity {d.perplexity:.2f})")
    print_stats(result.stats)
    store = result.ngram_store or "none"
    click.echo(f"{len(result.drafts)} drafts in one pass: {result.seconds_per_draft * 1000:.1f} ms per draft; "
               f"n-gram store: {store}", err=True)


@main.group()
def ngram() -> None:
    """N-gram stores for `edgegen complete`."""


@ngram.command("build")
@click.option("--text", "texts", multiple=True, required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="UTF-8 text (repeatable); a .jsonl file gives one document per line's \"text\".")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="The store folder.")
@click.option("--model", "model", default=None, help="The model whose tokenizer counts (default: tiny-chat).")
@click.option("--top", default=16, show_default=True, type=click.IntRange(min=1),
              help="Successors kept per context (the most frequent).")
@click.option("--min-count", default=2, show_default=True, type=click.IntRange(min=1),
              help="Pairs seen fewer times are dropped (orders 3-6; bigrams keep every pair).")
@click.option("--force", is_flag=True, help="Replace OUT if it is a previous edgegen output.")
def ngram_build(texts: tuple[Path, ...], out: Path, model: str | None, top: int, min_count: int, force: bool) -> None:
    """Count n-grams (orders 2-6) of local text with a model's tokenizer into a store. The text is
    streamed: memory follows the distinct n-grams (the store before pruning), not the corpus."""
    from tqdm import tqdm

    from edgegen.cli.generate import load_text_model
    from edgegen.core.outputs import atomic_folder, check_output
    from edgegen.decoding import ngram as store

    _check_corpus(texts)
    out = check_output(out, force=force, sources=texts)
    llm = load_text_model(model)
    counted = {"documents": 0}
    with tqdm(total=sum(p.stat().st_size for p in texts), desc="counting", unit="B", unit_scale=True, leave=False,
              disable=None) as bar, atomic_folder(out) as tmp:
        docs = _documents(texts, llm.tokenizer, bar.update, counted)
        meta = store.build(docs, tmp, vocab_size=llm.backend.vocab_size, top=top,
                           min_count={2: 1, **{n: min_count for n in store.ORDERS if n > 2}},
                           tokenizer_fingerprint=store.fingerprint(llm.tokenizer.vocabulary()),
                           sources=[p.name for p in texts])
    click.echo(f"wrote {out} ({meta['tokens']:,} tokens from {counted['documents']:,} documents)", err=True)


def _check_corpus(paths: tuple[Path, ...]) -> None:
    """Every corpus is a file of known size: a pipe or a device (/dev/zero) could be endless."""
    from edgegen.core.errors import ConfigError
    from edgegen.core.text_stream import is_regular

    for path in paths:
        if not path.exists():
            raise ConfigError(f"{path} does not exist")
        if not is_regular(path):
            raise ConfigError(f"{path} is not a regular file (a pipe or a device may never end); "
                              "save the text to a file and give that")


def _documents(paths: tuple[Path, ...], tokenizer: Any, on_bytes: Any, counted: dict) -> Iterator[Iterator[Any]]:
    """Each document as a stream of token-id arrays: a text file is one document, each line of a
    .jsonl file one (its "text")."""
    import numpy as np

    from edgegen.core.errors import ConfigError
    from edgegen.core.text_stream import read_lines, read_pieces

    def blocks(pieces: Any) -> Iterator[Any]:
        for ids in tokenizer.encode_chunks(pieces, add_special_tokens=False):
            yield np.asarray(ids, dtype=np.int64)

    for path in paths:
        if path.suffix != ".jsonl":
            counted["documents"] += 1
            yield blocks(read_pieces(path, on_bytes=on_bytes))
            continue
        for number, line in enumerate(read_lines(path, on_bytes=on_bytes), 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
                if not isinstance(text, str):
                    raise TypeError(f"\"text\" is a {type(text).__name__}")
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"{path} line {number}: each line must be a JSON object with a \"text\" "
                                  f"({exc})") from None
            counted["documents"] += 1
            yield blocks([text])
