"""Measure what train_tiny_copy.py changed and write the tiny-chat / tiny-draft model cards.

Used by train_tiny_copy.py after training; also on its own, from the repository root:

    python examples/tiny_copy_eval.py --before /tmp/tiny_base --out edgegen/_bundled

- held-out perplexity of both models and their agreement (tiny_eval.compare_on_heldout), before and after;
- prompt lookup on the edit prompts of benchmarks/_spec_prompts.py (held-out paragraphs): tokens per
  forward and wall-clock speed-up over plain greedy decoding, with edgegen's ONNX runtime, one
  thread, before and after; the replies' share of 4-grams found in the prompt (how much they copy);
- the same two figures on the chat prompts, where there is nothing to copy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
import tiny_eval  # noqa: E402
import torch  # noqa: E402
from _spec_prompts import PROMPTS  # noqa: E402
from train_tiny import encode_records, make_windows  # noqa: E402

MAX_TOKENS = 192
BASE_STATS = {  # what train_tiny.py reported for the base models (their cards before the copy training)
    "tiny-chat": {"tokens_seen": 4096000, "train_seconds": 1824.0, "steps": 2000, "peak_lr": 0.001},
    "tiny-draft": {"tokens_seen": 2252800, "train_seconds": 258.0, "steps": 1100, "peak_lr": 0.002},
}
BASE_SETTINGS = {"vocab_size": 8192, "threads": 2, "seed": 0, "batch": 8, "seq_len": 256, "bf16": True}


def copied_share(prompt_ids: list[int], reply_ids: list[int], n: int = 4) -> float:
    """Share of the reply's n-grams that occur in the prompt."""
    grams = {tuple(prompt_ids[i:i + n]) for i in range(len(prompt_ids) - n + 1)}
    reply = [tuple(reply_ids[i:i + n]) for i in range(len(reply_ids) - n + 1)]
    return sum(g in grams for g in reply) / max(len(reply), 1)


def lookup_figures(folder: Path, prompts: list[str], work: Path) -> dict:
    """Plain greedy vs prompt lookup (`--draft prompt-lookup`) on `prompts` with edgegen (ONNX)."""
    import edgegen

    model = edgegen.load(edgegen.convert(str(folder), work, runtime="onnx"))
    plain_s = lookup_s = 0.0
    tokens = forwards = 0
    copied, texts = [], []
    for prompt in prompts:
        ids = model.tokenizer.encode_chat([{"role": "user", "content": prompt}])
        runs = {}
        for name, options in (("plain", {}), ("lookup", {"draft": "prompt-lookup"})):
            best = None
            for _ in range(3):  # the fastest of three: one pinned thread, little noise, but a first call warms up
                model.reset()
                t0 = time.perf_counter()
                result = model.generate(ids, max_tokens=MAX_TOKENS, **options)
                seconds = time.perf_counter() - t0
                best = (seconds, result) if best is None or seconds < best[0] else best
            runs[name] = best
        if runs["plain"][1].token_ids != runs["lookup"][1].token_ids:
            raise RuntimeError(f"prompt lookup changed the greedy reply to {prompt[:40]!r}")
        plain_s, lookup_s = plain_s + runs["plain"][0], lookup_s + runs["lookup"][0]
        stats = runs["lookup"][1].stats
        tokens, forwards = tokens + stats.generated_tokens, forwards + stats.forwards
        copied.append(copied_share(ids, runs["plain"][1].token_ids))
        texts.append(runs["plain"][1].text)
    return {"tokens_per_forward": round(tokens / max(forwards, 1), 3), "speedup": round(plain_s / lookup_s, 3),
            "reply_tokens": tokens, "copied_4grams": round(sum(copied) / len(copied), 3),
            "plain_tok_s": round(tokens / plain_s, 1), "texts": texts}


def measure(before: Path, out: Path, corpus: Path) -> dict:
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out / "tiny-chat")
    windows = make_windows(encode_records(corpus / "heldout.jsonl", tokenizer, None), 256)[:192]
    figures: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, root in (("before", before), ("after", out)):
            target, _ = tiny_eval.load_checkpoint(root / "tiny-chat")
            draft, _ = tiny_eval.load_checkpoint(root / "tiny-draft")
            with torch.no_grad():
                figures[label] = {"heldout": tiny_eval.compare_on_heldout(target, draft, windows)}
            for kind in ("edit", "chat"):
                figures[label][kind] = lookup_figures(root / "tiny-chat", PROMPTS[kind], Path(tmp) / f"{label}-{kind}")
                print(label, kind, {k: v for k, v in figures[label][kind].items() if k != "texts"}, flush=True)
    return figures


SECTION = """\
## Copying (continued training)

tiny-chat and tiny-draft were then trained on for {steps} / {draft_steps} more steps on their corpus
mixed with {edit_turns:,} edit-style turns over training-split passages (rewrite without changing,
fix a typo in, quote, reformat one sentence per line or as a list, continue a passage or code, and
copy a passage whose words are shuffled, which only copying can predict;
`examples/tiny_copy_data.py`), whose answers copy most of the prompt, as real instruction data
has; {edit_share:.0%} of the {stream_tokens:,}-token stream. Same objective, optimiser and peak
learning rates as above, windows of {seq_len} tokens, seed {seed}; {minutes:.1f} min on
{threads} CPU thread(s). Recipe: `examples/train_tiny_copy.py` (after `train_tiny.py`).

Loss on the answers of held-out copy and typo turns against the loss on their prompts (copying
shows as answers far easier than prompts; it set in between steps 300 and 500):

{probes}

Prompt lookup (`--draft prompt-lookup`) with edgegen's ONNX runtime on one thread, greedy, at most
{max_tokens} new tokens: eight edit requests over held-out paragraphs, and the four chat questions
(`benchmarks/_spec_prompts.py`). Tokens per forward of the target model; speed-up: wall clock of
plain greedy decoding over that of prompt lookup, same replies; copied: share of the reply's
4-grams found in the prompt.

| | before | after |
|---|---|---|
| edit prompts: tokens per forward | {b_tpf} | {a_tpf} |
| edit prompts: speed-up | {b_speed}× | {a_speed}× |
| edit prompts: copied 4-grams | {b_copy} | {a_copy} |
| chat prompts: tokens per forward | {b_ctpf} | {a_ctpf} |
| held-out perplexity, tiny-chat | {b_ppl} | {a_ppl} |
| held-out perplexity, tiny-draft | {b_dppl} | {a_dppl} |
| draft/target agreement, temperature 0 | {b_agree} | {a_agree} |

The evaluation table above is measured on the shipped (continued) weights.

**user:** {edit_prompt}

```text
{edit_reply}
```
"""


def probe_table(probes: dict, every: int) -> str:
    """tiny-chat's copy probe during training (every `every` steps), every other one, as a table."""
    rows = ["| step | prompt loss | answer loss |", "|---|---|---|"]
    rows += [f"| {(i + 1) * every} | {p['prompt_loss']} | {p['answer_loss']} |"
             for i, p in enumerate(probes.get("tiny-chat", [])) if i % 2 == 1]
    return "\n".join(rows)


def evaluate_and_document(out: Path, corpus: Path, report: dict, before: Path) -> dict:
    figures = measure(before, out, corpus)
    report["evaluation"] = figures
    b, a, s, d = figures["before"], figures["after"], report["settings"], report["data"]
    section = SECTION.format(
        steps=report["tiny-chat"]["steps"], draft_steps=report["tiny-draft"]["steps"], edit_turns=d["edit_turns"],
        edit_share=d["edit_tokens"] / d["stream_tokens"], stream_tokens=d["stream_tokens"], seq_len=s["seq_len"],
        seed=s["seed"], minutes=(report["tiny-chat"]["train_seconds"] + report["tiny-draft"]["train_seconds"]) / 60,
        threads=s["threads"], max_tokens=MAX_TOKENS,
        b_tpf=b["edit"]["tokens_per_forward"], a_tpf=a["edit"]["tokens_per_forward"],
        b_speed=b["edit"]["speedup"], a_speed=a["edit"]["speedup"],
        b_copy=b["edit"]["copied_4grams"], a_copy=a["edit"]["copied_4grams"],
        b_ctpf=b["chat"]["tokens_per_forward"], a_ctpf=a["chat"]["tokens_per_forward"],
        b_ppl=b["heldout"]["tiny-chat_perplexity"], a_ppl=a["heldout"]["tiny-chat_perplexity"],
        b_dppl=b["heldout"]["tiny-draft_perplexity"], a_dppl=a["heldout"]["tiny-draft_perplexity"],
        b_agree=b["heldout"]["agreement_temperature_0"], a_agree=a["heldout"]["agreement_temperature_0"],
        edit_prompt=PROMPTS["edit"][0].replace("\n\n", " "), edit_reply=a["edit"]["texts"][0],
        probes=probe_table(report.get("probes", {}), s.get("probe_every", 50)),
    )
    windows_report = tiny_eval.evaluate_and_document(out, _heldout(out, corpus), BASE_STATS, BASE_SETTINGS,
                                                     extra={"tiny-chat": section, "tiny-draft": section})
    report["cards"] = windows_report
    return report


def _heldout(out: Path, corpus: Path) -> torch.Tensor:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out / "tiny-chat")
    return make_windows(encode_records(corpus / "heldout.jsonl", tokenizer, None), 256)[:192]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, default=Path("/tmp/tiny_base"))
    parser.add_argument("--out", type=Path, default=REPO / "edgegen" / "_bundled")
    parser.add_argument("--corpus", type=Path, default=Path("/tmp/tiny_corpus"))
    parser.add_argument("--report", type=Path, default=Path("/tmp/tiny_copy_train.json"))
    args = parser.parse_args()
    report = json.loads(args.report.read_text())
    report = evaluate_and_document(args.out, args.corpus, report, args.before)
    args.report.with_name("tiny_copy_eval.json").write_text(json.dumps(report, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
