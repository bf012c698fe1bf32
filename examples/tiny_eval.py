"""Evaluate the saved tiny-chat / tiny-draft folders and write their model cards (README.md).

Used by train_tiny.py after training; it reloads the fp16 folders exactly as a user would
(`AutoTokenizer` / `AutoModelForCausalLM`), so the numbers describe the shipped checkpoints.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import sentencepiece as spm
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import tiny_corpus

TARGET, DRAFT = "tiny-chat", "tiny-draft"
SAMPLE_PROMPTS = (
    "What does json.dumps do?",
    "Explain list comprehensions.",
    "What is a generator?",
    "Tell me about the statistics module.",
)
MAX_NEW_TOKENS = 64


def load_checkpoint(folder: Path):
    """(model in fp32, tokenizer) from a bundled folder, after checking the tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    processor = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    check_tokenizer(tokenizer, processor)
    return model, tokenizer


def check_tokenizer(tokenizer, processor: spm.SentencePieceProcessor) -> None:
    """tokenizer.json agrees with tokenizer.model, text round-trips, the chat template renders
    the ChatML layout the models learned, and <s> is added."""
    text = "The json module:\n  json.dumps(obj, indent=4)  # → str, 100 % ok\n日本<|im_end|>"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if ids != processor.encode(text) or tokenizer.decode(ids) != text:
        raise RuntimeError("tokenizer.json and tokenizer.model disagree, or no round trip")
    if tokenizer("x").input_ids[0] != tokenizer.bos_token_id:
        raise RuntimeError("the tokenizer does not add <s>")
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                             add_generation_prompt=True)
    if rendered != "<s><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n":
        raise RuntimeError(f"unexpected chat template output {rendered!r}")


@torch.no_grad()
def compare_on_heldout(target, draft, windows: torch.Tensor, batch: int = 8) -> dict[str, float]:
    """Held-out perplexity of both models and their next-token agreement.

    Agreement at temperature 1 is the mean over positions of sum_v min(p(v), q(v)) (p: target,
    q: draft), the expected acceptance rate of speculative sampling; at temperature 0 it is the
    rate at which both argmaxes agree.
    """
    nll = {TARGET: 0.0, DRAFT: 0.0}
    overlap, argmax_equal, count = 0.0, 0.0, 0
    for start in range(0, len(windows), batch):
        inputs, labels = windows[start : start + batch, :-1], windows[start : start + batch, 1:]
        logits_p = target(input_ids=inputs).logits.float()  # (B, T, V)
        logits_q = draft(input_ids=inputs).logits.float()  # (B, T, V)
        for name, logits in ((TARGET, logits_p), (DRAFT, logits_q)):
            nll[name] += torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), labels.flatten(), reduction="sum").item()
        p, q = logits_p.softmax(-1), logits_q.softmax(-1)
        overlap += torch.minimum(p, q).sum(-1).sum().item()
        argmax_equal += (logits_p.argmax(-1) == logits_q.argmax(-1)).sum().item()
        count += labels.numel()
    return {
        "heldout_tokens": count,
        f"{TARGET}_perplexity": round(math.exp(nll[TARGET] / count), 3),
        f"{DRAFT}_perplexity": round(math.exp(nll[DRAFT] / count), 3),
        "agreement_temperature_0": round(argmax_equal / count, 4),
        "agreement_temperature_1": round(overlap / count, 4),
    }


@torch.no_grad()
def sample_turns(model, tokenizer) -> list[dict[str, str]]:
    """Greedy replies to SAMPLE_PROMPTS through the chat template, stopping at <|im_end|>."""
    turns = []
    for prompt in SAMPLE_PROMPTS:
        inputs = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                               add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)
        output = model.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW_TOKENS)
        reply = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        turns.append({"user": prompt, "assistant": reply})
    return turns


def corpus_packages() -> str:
    """Debian package names and versions of the documentation, as installed here."""
    result = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version}\n", "python3*-doc"],
                            capture_output=True, text=True, check=False)
    return ", ".join(result.stdout.split("\n")[:-1]) or "python3-doc (version unknown)"


def evaluate_and_document(out: Path, windows: torch.Tensor, stats: dict, settings: dict,
                          extra: dict[str, str] | None = None) -> dict:
    """Evaluate both saved folders, write their README.md model cards, return the report.
    `extra`: a card section per model, put before its sample turns."""
    models, tokenizers = {}, {}
    for name in (TARGET, DRAFT):
        models[name], tokenizers[name] = load_checkpoint(out / name)
    metrics = compare_on_heldout(models[TARGET], models[DRAFT], windows)
    report = {"settings": settings, "corpus": corpus_packages(), "heldout": metrics, "models": {}}
    for name in (TARGET, DRAFT):
        config = models[name].config
        report["models"][name] = {
            "parameters": models[name].num_parameters(),
            "architecture": {key: getattr(config, key) for key in ARCHITECTURE_FIELDS},
            **stats[name],
            "samples": sample_turns(models[name], tokenizers[name]),
        }
        size = sum(f.stat().st_size for f in (out / name).iterdir())
        report["models"][name]["folder_bytes"] = size
    for name in (TARGET, DRAFT):
        (out / name / "README.md").write_text(model_card(name, report, (extra or {}).get(name, "")))
    return report


ARCHITECTURE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                       "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
                       "head_dim", "rope_parameters", "rms_norm_eps", "tie_word_embeddings")

CARD_INTRO = {
    TARGET: "A tiny Llama-architecture chat model bundled with edgegen for tests, examples and\n"
            "demos of conversion and decoding. It writes Python-documentation-flavoured English;\n"
            "it is far too small to be a useful or reliable assistant.",
    DRAFT: "The speculative-decoding draft model for `tiny-chat`: same tokenizer, same data,\n"
           "about a seventh of its size. On its own it writes barely coherent text.",
}
CARD_TAGS = {TARGET: ("llama", "tiny", "edgegen"),
             DRAFT: ("llama", "tiny", "edgegen", "speculative-decoding")}
CARD = """\
---
library_name: transformers
pipeline_tag: text-generation
language: en
license: other
license_name: psf-2.0
license_link: https://docs.python.org/3/license.html
tags: [{tags}]
---

# {name}

{intro}

## Tokenizer

SentencePiece BPE (`tokenizer.model`, also as `tokenizer.json`), {vocab_size} pieces, byte
fallback, trained on the training split. Special tokens: `<unk>` 0, `<s>` 1 (bos), `</s>` 2,
`<pad>` 3, `<|im_start|>` 4, `<|im_end|>` 5 (eos; generation also stops at `</s>`).
Chat template (ChatML): `<s><|im_start|>user\\n…<|im_end|>\\n<|im_start|>assistant\\n`.

## Architecture

| field | value |
|---|---|
{architecture}
| parameters | {parameters:,} |

## Evaluation

Held-out text: {heldout_tokens:,} tokens from pages never trained on.

| metric | value |
|---|---|
| training tokens seen | {tokens_seen:,} |
| training time | {train_minutes:.1f} min on {threads} CPU thread(s) |
| held-out perplexity, tiny-chat | {chat_ppl} |
| held-out perplexity, tiny-draft | {draft_ppl} |
| draft/target agreement, temperature 0 | {agree_0} |
| draft/target agreement, temperature 1 | {agree_1} |

Agreement is the mean over held-out positions of Σ_v min(p(v), q(v)), with p the tiny-chat
and q the tiny-draft next-token distribution; at temperature 0 it is the rate at which their
argmaxes agree. It is the expected acceptance rate of one drafted token in speculative decoding.

## Training data

The text of Python's own documentation: the HTML of the Python 3.11 docs as packaged by Debian
({packages}). Python and its documentation are Copyright © 2001-2023 Python Software Foundation;
the documentation is licensed under the PSF License Agreement (PSF-2.0), and since Python 3.8.6
its examples, recipes and other code are also dual-licensed under the Zero-Clause BSD license
(see https://docs.python.org/3/license.html, included in the corpus as `license.html`).

Recipe (`examples/tiny_corpus.py`): every HTML page except the indexes, parsed with
`html.parser`; only the main body is kept (navigation, sidebars, footers and permalinks are
dropped), one text block per line, code blocks cut to their first {code_lines} lines. From each
section heading and each API entry (`json.dumps`, …) followed by a paragraph, a question/answer
turn is made ("What is …?", "Explain ….", "What does … do?"); the answer is the first one or
two sentences of that paragraph. Turns are rendered with the chat template; release notes
(`whatsnew/`) give prose only. About 2% of the pages (chosen by a hash of their path) are held
out for evaluation; the rest, prose and chat records shuffled together, is the training set.

## Training

From scratch, seed {seed}: {steps} steps of AdamW (β 0.9/0.95, weight decay 0.1 on matrices),
peak learning rate {peak_lr}, linear warm-up over 5% of the steps then cosine decay to 10% of
the peak, batch {batch} × {seq_len} tokens, gradient clipping 1.0, bf16 autocast {bf16}; saved
in fp16. Reproduce from the repository root (both models are trained by one command):

```sh
apt-get install -y python3-doc
python examples/tiny_corpus.py --out /tmp/tiny_corpus
python examples/train_tiny.py --corpus /tmp/tiny_corpus --out edgegen/_bundled
```

{extra}## Sample chat turns

Greedy decoding through the chat template, at most {max_new_tokens} new tokens, stopping at
`<|im_end|>`; verbatim.

{samples}
"""


def model_card(name: str, report: dict, extra: str = "") -> str:
    """The README.md of one bundled folder."""
    entry, heldout, settings = report["models"][name], report["heldout"], report["settings"]
    architecture = "\n".join(f"| {key} | {value} |" for key, value in entry["architecture"].items())
    samples = "\n\n".join(f"**user:** {turn['user']}\n\n```text\n{turn['assistant']}\n```"
                          for turn in entry["samples"])
    return CARD.format(
        name=name, intro=CARD_INTRO[name], tags=", ".join(CARD_TAGS[name]), vocab_size=settings["vocab_size"],
        architecture=architecture, parameters=entry["parameters"],
        heldout_tokens=heldout["heldout_tokens"], tokens_seen=entry["tokens_seen"],
        train_minutes=entry["train_seconds"] / 60, threads=settings["threads"],
        chat_ppl=heldout[f"{TARGET}_perplexity"], draft_ppl=heldout[f"{DRAFT}_perplexity"],
        agree_0=heldout["agreement_temperature_0"], agree_1=heldout["agreement_temperature_1"],
        packages=report["corpus"], code_lines=tiny_corpus.MAX_CODE_LINES, seed=settings["seed"],
        steps=entry["steps"], peak_lr=entry["peak_lr"], batch=settings["batch"],
        seq_len=settings["seq_len"], bf16=settings["bf16"], max_new_tokens=MAX_NEW_TOKENS,
        samples=samples, extra=extra + "\n" if extra else "",
    )
