"""Self-distillation data for a second training stage of tiny-chat-bd (dParallel's recipe, arXiv
2509.26488, with tiny-chat as the judge): the block-diffusion model's own replies to training
questions, decoded by edgegen at block 8 and `--threshold` (0.7: replies decoded more in parallel),
kept where tiny-chat finds them about as likely as its own greedy reply, tiny-chat's reply otherwise.

A parallel decoder commits a token once it is confident of it; its own replies are the targets it
can become confident of fastest (dParallel trains LLaDA on LLaDA's own answers). The filter keeps
the quality: a reply is kept only if its perplexity under tiny-chat is at most `--max-ratio` times
that of tiny-chat's greedy reply to the same question (tiny_bd_distill.py's records).

    python examples/tiny_bd_self_distill.py --model edgegen/_bundled/tiny-chat-bd --out /tmp/tiny_bd_self.jsonl

Writes chat records (jsonl) in the corpus's format, in the teacher's order, for
`train_tiny_bd.py --replies`, and beside them its figures (the same name, .json) and every answer
with its perplexity gap (.answers.jsonl).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import torch
from tiny_bd_probe import question, reply_nll
from tqdm import tqdm
from transformers import AutoTokenizer, LlamaForCausalLM

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import edgegen  # noqa: E402

ASSISTANT, END = "<|im_start|>assistant\n", "<|im_end|>"


def mean_nll(ar, prompt: list[int], reply: list[int]) -> float:
    total, count = reply_nll(ar, prompt, reply)
    return total / count


def answer(args: argparse.Namespace, index: int, workers: int, out: Path) -> list[float]:
    """Answer every `workers`-th teacher question from the `index`-th into `out` (jsonl: the record's
    user turn, tiny-chat's reply, the model's finished reply or null, and its NLL gap per token over
    tiny-chat's); returns each finished reply's perplexity over the teacher's."""
    torch.set_num_threads(args.threads)
    tqdm.set_lock(threading.RLock())  # tqdm's default lock is a process-shared semaphore, left behind at exit
    teacher = [json.loads(line) for line in args.teacher.read_text().splitlines()[1:]]
    teacher = teacher[: args.count or None][index::workers]
    ar = LlamaForCausalLM.from_pretrained(args.ar, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.ar)
    ratios = []
    with tempfile.TemporaryDirectory() as work:
        bd = edgegen.load(edgegen.convert(str(args.model), Path(work) / "bd", runtime="onnx"), threads=args.threads)
        with out.open("w") as sink:
            for record in tqdm(teacher, desc="self-distilling", mininterval=10, disable=index > 0):
                prompt = bd.tokenizer.encode_chat([{"role": "user", "content": question(record["text"])}])
                bd.reset()
                result = bd.generate(prompt, max_tokens=args.max_tokens, block_size=8, threshold=args.threshold)
                head, reply = record["text"].split(ASSISTANT)
                reply = reply.removesuffix("\n").removesuffix(END)
                own = gap = None
                if result.stats.finish_reason == "stop" and result.token_ids:
                    theirs = tokenizer(reply, add_special_tokens=False).input_ids
                    own, gap = result.text, mean_nll(ar, prompt, result.token_ids) - mean_nll(ar, prompt, theirs)
                    ratios.append(math.exp(gap))
                sink.write(json.dumps({"head": head, "teacher": reply, "own": own, "gap": gap}) + "\n")
    return ratios


def choose(answers: list[dict], max_ratio: float, max_repeats: int) -> tuple[list[dict], int, int]:
    """The chat records to train on, how many hold the model's own reply, and how many of its replies
    passed the perplexity filter but were dropped as repeats: with `max_repeats` > 0, a reply the
    model gives to more questions than both `max_repeats` and tiny-chat gives it to (a canned reply
    it has collapsed onto, which tiny-chat finds fluent whatever the question) is not kept."""
    given = Counter(a["own"] for a in answers if a["own"] is not None)
    teacher = Counter(a["teacher"] for a in answers)
    records, own, repeated = [], 0, 0
    for a in answers:
        reply = a["teacher"]
        if a["own"] is not None and a["gap"] <= math.log(max_ratio):
            if max_repeats and given[a["own"]] > max(max_repeats, teacher[a["own"]]):
                repeated += 1
            else:
                reply, own = a["own"], own + 1
        text = a["head"] + ASSISTANT + reply + END + "\n"
        records.append({"doc": "tiny-chat-bd self-distilled", "kind": "chat", "text": text})
    return records, own, repeated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="the previous round's tiny-chat-bd folder")
    parser.add_argument("--teacher", type=Path, default=Path("/tmp/tiny_bd_distill.jsonl"),
                        help="tiny-chat's greedy replies (tiny_bd_distill.py's cache)")
    parser.add_argument("--ar", type=Path, default=REPO / "edgegen" / "_bundled" / "tiny-chat")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int, default=0, help="questions to answer (0: all)")
    parser.add_argument("--max-ratio", type=float, default=1.1)
    parser.add_argument("--max-repeats", type=int, default=0,
                        help="drop the model's replies given to more questions than this and than tiny-chat gives "
                             "them to (0: no limit, as in rounds 1-4)")
    parser.add_argument("--max-tokens", type=int, default=40)
    parser.add_argument("--threshold", type=float, default=0.7, help="the commit threshold the replies are decoded at")
    parser.add_argument("--workers", type=int, default=2, help="processes, one question at a time each")
    parser.add_argument("--threads", type=int, default=1, help="threads per process")
    args = parser.parse_args()
    started = time.time()
    with tempfile.TemporaryDirectory() as work:
        shards = [Path(work) / f"{i}.jsonl" for i in range(args.workers)]
        with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
            answered = pool.starmap(answer, [(args, i, args.workers, shard) for i, shard in enumerate(shards)])
        ratios = sorted(r for a in answered for r in a)
        lines = [shard.read_text().splitlines() for shard in shards]
        merged = [line for row in zip(*lines) for line in row] + [rest[-1] for rest in lines if len(rest) > len(lines[-1])]
    answers = args.out.with_suffix(".answers.jsonl")  # every reply with its gap, to choose again from
    answers.write_text("".join(line + "\n" for line in merged))
    records, own, repeated = choose([json.loads(line) for line in merged], args.max_ratio, args.max_repeats)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    tmp.replace(args.out)
    figures = {"model": str(args.model), "replies": len(merged), "own": own, "threshold": args.threshold,
               "max_ratio": args.max_ratio, "max_repeats": args.max_repeats, "repeated": repeated,
               "finished": len(ratios), "ratio_quantiles": {f"{q:.2f}": round(ratios[int(q * (len(ratios) - 1))], 3)
                                                            for q in (0.1, 0.25, 0.5, 0.75, 0.9)} if ratios else {},
               "max_tokens": args.max_tokens, "seconds": round(time.time() - started, 1),
               "workers": args.workers, "threads": args.threads}
    args.out.with_suffix(".json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"{len(merged)} replies, {own} the model's own ({own / max(len(merged), 1):.0%}), {repeated} dropped as "
          f"repeats, {figures['seconds']:.0f} s")


if __name__ == "__main__":
    main()
