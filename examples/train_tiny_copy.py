"""Teach the bundled `tiny-chat` and `tiny-draft` to copy: continue their training on their own
corpus mixed with edit-style turns (rewrite, fix a typo in, quote, reformat or continue a given
passage; tiny_copy_data.py) whose answers copy most of the prompt.

    python examples/tiny_corpus.py --out /tmp/tiny_corpus      # once
    python examples/train_tiny.py --corpus /tmp/tiny_corpus --out /tmp/tiny_base   # or start from the shipped folders
    python examples/train_tiny_copy.py --start /tmp/tiny_base --out edgegen/_bundled

Why: prompt-lookup drafting proposes the tokens that followed the last n-gram of the context in
the prompt, so it pays when the reply copies from the prompt, as real assistants do when asked
to rewrite, fix or quote. tiny-chat's corpus never asked for that and it paraphrases instead.

Continued training, not from scratch: the same next-token objective, AdamW and schedule as
train_tiny.py, seeded; windows of 512 tokens (the passages and their copies must fit one window;
the base was trained on 256) drawn from one stream in which the training split's records and the
edit turns are shuffled together. Checkpoints every `--checkpoint-every` steps under `--work`; a
re-run with the same settings resumes. Then the held-out evaluation and the model cards
(tiny_eval.py), and prompt lookup measured with edgegen on edit prompts over held-out pages
(tiny_copy_eval.py).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

import tiny_copy_data
import torch
from train_tiny import encode_list, make_windows, save_checkpoint, train
from transformers import AutoTokenizer, LlamaForCausalLM

BUNDLED = Path(__file__).resolve().parents[1] / "edgegen" / "_bundled"
MODELS = {"tiny-chat": 1e-3, "tiny-draft": 2e-3}  # peak learning rates: those of train_tiny.py


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path("/tmp/tiny_corpus"))
    parser.add_argument("--start", type=Path, default=BUNDLED, help="folder holding tiny-chat/ and tiny-draft/")
    parser.add_argument("--out", type=Path, default=BUNDLED)
    parser.add_argument("--work", type=Path, default=Path("/tmp/tiny_copy_work"))
    parser.add_argument("--report", type=Path, default=Path("/tmp/tiny_copy_train.json"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--draft-steps", type=int, default=1500)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS),
                        help="train only these (each is independent of the other: same data, own seed order)")
    parser.add_argument("--edit-turns", type=int, default=30000, help="edit-style turns mixed into the corpus")
    parser.add_argument("--probe-every", type=int, default=50,
                        help="print the loss on held-out copy turns' answers and prompts this often")
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--no-bf16", dest="bf16", action="store_false", help="train in fp32")
    parser.add_argument("--no-card", dest="card", action="store_false", help="skip the evaluation and cards")
    return parser.parse_args()


def training_stream(corpus: Path, tokenizer, edit_turns: int, seed: int) -> tuple[list[int], dict]:
    """The training split's records and `edit_turns` edit turns, shuffled together, as one stream."""
    records = [json.loads(line) for line in (corpus / "train.jsonl").read_text().splitlines()]
    edits = tiny_copy_data.copy_records(records, edit_turns, seed)
    mixed = records + edits
    random.Random(seed).shuffle(mixed)
    stream = encode_list(mixed, tokenizer)
    edit_tokens = sum(len(ids) + 1 for ids in tokenizer([r["text"] for r in edits], add_special_tokens=False,
                                                       verbose=False).input_ids)
    tasks: dict[str, int] = {}
    for record in edits:
        tasks[record["task"]] = tasks.get(record["task"], 0) + 1
    return stream, {"records": len(records), "edit_turns": len(edits), "tasks": tasks,
                    "stream_tokens": len(stream), "edit_tokens": edit_tokens}


def encode_turn(text: str, tokenizer) -> tuple[torch.Tensor, int]:
    """(ids of <s> + the turn, where the answer starts)."""
    head = text.split("<|im_start|>assistant\n")[0] + "<|im_start|>assistant\n"
    ids = tokenizer("<s>" + text, add_special_tokens=False, return_tensors="pt").input_ids
    return ids, len(tokenizer("<s>" + head, add_special_tokens=False).input_ids)


@torch.no_grad()
def copy_probe(model, probes: list[tuple[torch.Tensor, int]]) -> dict[str, float]:
    """Mean next-token loss on the prompts and on the answers of held-out copy / typo turns: the
    answers copy the prompt, so their loss falls far below the prompts' once the model copies."""
    model.eval()
    prompt = answer = 0.0
    for ids, start in probes:
        loss = torch.nn.functional.cross_entropy(model(input_ids=ids).logits[0, :-1].float(), ids[0, 1:],
                                                 reduction="none")
        prompt, answer = prompt + loss[:start - 1].mean().item(), answer + loss[start - 1:].mean().item()
    return {"prompt_loss": round(prompt / len(probes), 3), "answer_loss": round(answer / len(probes), 3)}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    model_file = args.work / "tokenizer.model"  # save_checkpoint replaces the out folder, which may be the start
    shutil.copyfile(args.start / "tiny-chat" / "tokenizer.model", model_file)
    tokenizer = AutoTokenizer.from_pretrained(args.start / "tiny-chat")
    stream, data = training_stream(args.corpus, tokenizer, args.edit_turns, args.seed)
    windows = make_windows(stream, args.seq_len)
    print(f"{len(windows)} windows of {args.seq_len}: {json.dumps(data)}", flush=True)
    heldout = [json.loads(line) for line in (args.corpus / "heldout.jsonl").read_text().splitlines()]
    probes = [encode_turn(r["text"], tokenizer) for r in tiny_copy_data.copy_records(heldout, 64, args.seed + 1)
              if r["task"] in ("copy", "typo")][:16]
    report = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "data": data}
    models = {}
    for name, peak in MODELS.items():
        if name not in args.models:
            continue
        steps = args.steps if name == "tiny-chat" else args.draft_steps
        model = LlamaForCausalLM.from_pretrained(args.start / name, dtype=torch.float32)
        print(f"{name}: {steps} steps from {args.start / name}", flush=True)
        curve = report.setdefault("probes", {}).setdefault(name, [])

        def probe(m, curve=curve):
            curve.append(copy_probe(m, probes))
            return curve[-1]

        stats = train(model, windows, args, steps, peak, resume=args.work / f"{name}.pt", probe=probe)
        report[name] = {**stats, "steps": steps, "peak_lr": peak, "windows": len(windows)}
        models[name] = model
    for name, model in models.items():  # saved together, after both trained: a resumed run starts from the same start
        save_checkpoint(model, tokenizer, model_file, args.out / name)
    report["wall_seconds"] = round(time.time() - started, 1)
    if args.report.exists() and set(args.models) != set(MODELS):  # a partial run adds to the last report
        report = {**json.loads(args.report.read_text()), **{k: v for k, v in report.items() if k != "probes"},
                  "probes": {**json.loads(args.report.read_text()).get("probes", {}), **report.get("probes", {})}}
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2), flush=True)
    if args.card:
        import tiny_copy_eval

        tiny_copy_eval.evaluate_and_document(args.out, args.corpus, report, args.start)


if __name__ == "__main__":
    main()
