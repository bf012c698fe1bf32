"""Sequence-level distillation data for tiny-chat-bd: tiny-chat's own greedy replies to the
training set's chat questions.

The corpus's reference answers are the first sentences of documentation paragraphs, which a
12M-parameter model cannot predict; its greedy replies are what it actually says. Training the
block-diffusion model on those (Kim & Rush's sequence-level knowledge distillation, as consistency
/ certainty-forcing distillation does for parallel decoders) gives it low-entropy targets, so that
it can commit several tokens per forward and stay close to the autoregressive model's output.
Only training-split questions are used; evaluation prompts come from held-out pages.

Greedy decoding in batches (left padding, fp32, a KV cache), stopping at <|im_end|> or </s>;
replies that do not end within `max_new` tokens are dropped (they are repetition loops).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, DynamicCache, LlamaForCausalLM

ASSISTANT = "<|im_start|>assistant\n"


def questions(records: list[dict], count: int) -> list[str]:
    """The user turns of the first `count` chat records (records already shuffled by the caller)."""
    chat = [r["text"] for r in records if r["kind"] == "chat"][:count]
    return [text.split(ASSISTANT)[0] + ASSISTANT for text in chat]  # "<|im_start|>user\n…<|im_end|>\n" + header


@torch.no_grad()
def greedy_batch(model, tokenizer, prompts: list[str], max_new: int, stop: tuple[int, ...]) -> list[list[int] | None]:
    """Greedy replies (token ids, stop token excluded) or None where no stop came in time."""
    enc = tokenizer(["<s>" + p for p in prompts], add_special_tokens=False, return_tensors="pt", padding=True)
    att = enc.attention_mask  # (B, P)
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    logits = model(input_ids=enc.input_ids, attention_mask=att, position_ids=pos, past_key_values=cache).logits
    token, last = logits[:, -1].argmax(-1), pos[:, -1]
    stops = torch.tensor(stop)
    steps, done = [token], torch.isin(token, stops)
    while len(steps) < max_new and not done.all():
        att, last = torch.cat([att, torch.ones_like(att[:, :1])], 1), last + 1
        logits = model(input_ids=token[:, None], attention_mask=att, position_ids=last[:, None],
                       past_key_values=cache).logits
        token = torch.where(done, torch.full_like(token, tokenizer.pad_token_id), logits[:, -1].argmax(-1))
        steps.append(token)
        done |= torch.isin(token, stops)
    replies = []
    for row in torch.stack(steps, 1).tolist():  # (B, steps)
        end = next((i for i, t in enumerate(row) if t in stop), None)
        replies.append(None if end is None else row[:end])
    return replies


def distill(start: Path, records: list[dict], count: int, cache: Path, max_new: int = 40,
            batch: int = 256) -> tuple[list[dict], float]:
    """Chat records whose assistant turn is tiny-chat's greedy reply, and the seconds it took to
    make them; cached in `cache` (jsonl: a header with the settings and seconds, then the records)."""
    key = {"start": str(start), "count": count, "max_new": max_new,
           "first": questions(records, 1)[0] if count else ""}
    if cache.is_file():
        lines = cache.read_text().splitlines()
        header = json.loads(lines[0]) if lines else {}
        if header.get("key") == key:
            return [json.loads(line) for line in lines[1:]], header["seconds"]
    tokenizer = AutoTokenizer.from_pretrained(start)
    tokenizer.padding_side = "left"
    model = LlamaForCausalLM.from_pretrained(start, dtype=torch.float32).eval()
    stop = (tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("</s>"))
    prompts = questions(records, count)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths batch together
    out: dict[int, dict] = {}
    started = time.time()
    for s in range(0, len(order), batch):
        chunk = order[s:s + batch]
        for i, reply in zip(chunk, greedy_batch(model, tokenizer, [prompts[i] for i in chunk], max_new, stop)):
            if reply is not None:
                text = prompts[i] + tokenizer.decode(reply, skip_special_tokens=False) + "<|im_end|>\n"
                out[i] = {"doc": "tiny-chat greedy", "kind": "chat", "text": text}
        print(f"distilled {min(s + batch, len(order))}/{len(order)} questions "
              f"({time.time() - started:.0f} s)", flush=True)
    kept, seconds = [out[i] for i in sorted(out)], round(time.time() - started, 1)
    cache.write_text("".join(json.dumps(r) + "\n" for r in [{"key": key, "seconds": seconds}, *kept]))
    return kept, seconds
