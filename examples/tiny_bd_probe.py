"""A quick decoding probe for tiny-chat-bd while it trains: block-diffusion decoding in torch,
without a cache, with edgegen's default commit rule, on chat questions.

Blocks are aligned to position 0 as edgegen aligns them; the block holding the prompt's tail is
decoded first. Each forward runs the whole sequence up to the block's end under the block-causal
mask (a block sees earlier blocks and itself), scores the block's masked positions, and commits
every one whose greedy probability reaches τ, and at least the most confident one (the threshold
rule at its default settings). Decoding stops once <|im_end|> (or </s>) is final with no mask
before it. The figures are edgegen's: reply tokens over forwards, stop token excluded.

Used by train_tiny_bd.py (`--probe-every`) and on its own on a saved folder:

    python examples/tiny_bd_probe.py edgegen/_bundled/tiny-chat-bd --corpus /tmp/tiny_corpus
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from pathlib import Path

import torch

ASSISTANT = "<|im_start|>assistant\n"


def question(text: str) -> str:
    """The user turn of a chat record's text."""
    return text.split("<|im_start|>user\n")[1].split("<|im_end|>")[0]


def stop_ids(tokenizer) -> tuple[int, ...]:
    """The tokens that end a reply: <|im_end|> and </s>."""
    return tuple(tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "</s>"))


def heldout_questions(corpus: Path, count: int) -> list[str]:
    """The user turns of the held-out split's first `count` chat records (pages never trained on)."""
    records = [json.loads(line) for line in (corpus / "heldout.jsonl").read_text().splitlines()]
    chat = [r["text"] for r in records if r["kind"] == "chat"]
    return [question(t) for t in chat[:count]]


def prompt_ids(tokenizer, question: str) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False).input_ids


def block_bias(length: int, block: int) -> torch.Tensor:
    """(1, 1, L, L) additive mask: a query sees its own block and every earlier one."""
    blk = torch.arange(length) // block
    return torch.zeros(1, 1, length, length).masked_fill(blk[None, :] > blk[:, None], float("-inf"))


@torch.no_grad()
def decode(model, prompt: list[int], mask_id: int, stops: tuple[int, ...], block: int = 8, tau: float = 0.9,
           max_new: int = 64) -> tuple[list[int], int]:
    """(reply ids without the stop token, forwards) for one prompt, greedy."""
    ids = list(prompt)
    first = len(prompt) // block * block
    end = first + -(-(len(prompt) + max_new - first) // block) * block
    ids += [mask_id] * (end - len(ids))
    forwards = 0
    for lo in range(first, end, block):
        hi = lo + block
        bias = block_bias(hi, block)
        while mask_id in ids[lo:hi]:
            logits = model(input_ids=torch.tensor([ids[:hi]]), attention_mask=bias,
                           position_ids=torch.arange(hi)[None]).logits[0, lo:hi].float()
            forwards += 1
            logits[:, mask_id] = -math.inf
            probs = logits.softmax(-1)
            conf, tokens = probs.max(-1)
            masked = [p for p in range(lo, hi) if ids[p] == mask_id]
            chosen = [p for p in masked if conf[p - lo] >= tau] or [max(masked, key=lambda p: conf[p - lo])]
            for p in chosen:
                ids[p] = int(tokens[p - lo])
            reply = ids[len(prompt):]
            done = next((i for i, t in enumerate(reply) if t in stops or t == mask_id), None)
            if done is not None and reply[done] != mask_id:
                return reply[:done], forwards
    return ids[len(prompt):len(prompt) + max_new], forwards


@torch.no_grad()
def reply_nll(ar_model, prompt: list[int], reply: list[int]) -> tuple[float, int]:
    """Summed negative log-likelihood of `reply` after `prompt` under the autoregressive model."""
    if not reply:
        return 0.0, 0
    ids = torch.tensor([prompt + reply])
    logp = ar_model(input_ids=ids).logits[0, len(prompt) - 1:-1].float().log_softmax(-1)
    return float(-logp.gather(1, torch.tensor(reply)[:, None]).sum()), len(reply)


def greedy_ar(ar_model, prompt: list[int], stops: tuple[int, ...], max_new: int = 64) -> list[int]:
    out = []
    with torch.no_grad():
        for _ in range(max_new):
            token = int(ar_model(input_ids=torch.tensor([prompt + out])).logits[0, -1].argmax())
            if token in stops:
                break
            out.append(token)
    return out


def variety(replies: list) -> dict:
    """How many replies are distinct, and how many questions get the commonest one."""
    counts = Counter(map(tuple, replies))
    return {"distinct": len(counts), "most_repeated": max(counts.values(), default=0)}


def probe(model, ar_model, tokenizer, questions: list[str], block: int = 8, tau: float = 0.9,
          ar_replies: list[list[int]] | None = None, max_new: int = 64) -> dict:
    """Tokens per forward and the replies' perplexity under the AR model, against its own greedy
    replies' (`ar_replies`, computed when not given): over all questions, and over those whose AR
    reply ends within `max_new` tokens (a looping AR reply is easy to predict and long, so it pulls
    the AR side of the ratio down); how many replies are distinct, and how many questions get the
    commonest one (a model collapsed onto a canned reply)."""
    stops = stop_ids(tokenizer)
    was_training = model.training
    model.eval()
    prompts = [prompt_ids(tokenizer, q) for q in questions]
    if ar_replies is None:
        ar_replies = [greedy_ar(ar_model, p, stops, max_new) for p in prompts]
    tokens = forwards = 0
    nll = {"all": [0.0, 0], "ended": [0.0, 0]}
    ar_nll = {"all": [0.0, 0], "ended": [0.0, 0]}
    replies = []
    for p, ar in zip(prompts, ar_replies):
        reply, n = decode(model, p, tokenizer.mask_token_id, stops, block, tau, max_new)
        replies.append(reply)
        tokens, forwards = tokens + len(reply), forwards + n
        for sums, ids in ((nll, reply), (ar_nll, ar)):
            a, b = reply_nll(ar_model, p, ids)
            for key in ("all", "ended") if len(ar) < max_new else ("all",):
                sums[key] = [sums[key][0] + a, sums[key][1] + b]
    model.train(was_training)
    ppl = {k: math.exp(v[0] / max(v[1], 1)) for k, v in nll.items()}
    ar_ppl = {k: math.exp(v[0] / max(v[1], 1)) for k, v in ar_nll.items()}
    return {"tokens_per_forward": round(tokens / max(forwards, 1), 3), "ppl_under_ar": round(ppl["all"], 3),
            "ar_ppl": round(ar_ppl["all"], 3), "ppl_ratio": round(ppl["all"] / ar_ppl["all"], 3),
            "ar_ended": sum(len(ar) < max_new for ar in ar_replies),
            "ratio_where_ar_ends": round(ppl["ended"] / ar_ppl["ended"], 3),
            **variety(replies), **{f"ar_{k}": v for k, v in variety(ar_replies).items()},
            "mean_reply_tokens": round(tokens / len(questions), 1)}


def main() -> None:
    from train_tiny_bd import load_sdar
    from transformers import AutoTokenizer, LlamaForCausalLM

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--corpus", type=Path, default=Path("/tmp/tiny_corpus"))
    parser.add_argument("--ar", type=Path, default=Path(__file__).resolve().parents[1] / "edgegen" / "_bundled" / "tiny-chat")
    parser.add_argument("--questions", type=int, default=48)
    parser.add_argument("--block", type=int, default=8)
    parser.add_argument("--tau", type=float, default=0.9)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_sdar(args.folder)
    tokenizer = AutoTokenizer.from_pretrained(args.folder)
    ar = LlamaForCausalLM.from_pretrained(args.ar, dtype=torch.float32).eval()
    print(json.dumps(probe(model, ar, tokenizer, heldout_questions(args.corpus, args.questions), args.block, args.tau)))


if __name__ == "__main__":
    main()
