"""Train the bundled `tiny-chat` and `tiny-draft` Llama checkpoints on the python3-doc corpus.

    python examples/tiny_corpus.py --out /tmp/tiny_corpus
    python examples/train_tiny.py --corpus /tmp/tiny_corpus --out edgegen/_bundled

Steps: train a SentencePiece BPE tokenizer on the training split, pack the training records into
fixed-length windows, train both models (AdamW, cosine learning rate, bf16 autocast, seeded),
save them as fp16 Hugging Face folders, then evaluate the saved checkpoints (see tiny_eval.py).
Runs on two CPU threads by default (about 35 minutes for both models on a 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import time
from pathlib import Path

import sentencepiece as spm
import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, LlamaTokenizer

import tiny_eval

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
ARCHITECTURES = {
    "tiny-chat": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=6,
                      num_key_value_heads=2, intermediate_size=1024),
    "tiny-draft": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=2, intermediate_size=384),
}
PEAK_LR = {"tiny-chat": 1e-3, "tiny-draft": 2e-3}


def corpus_lines(path: Path):
    """Every non-empty line of every record: the sentences the tokenizer trainer sees."""
    with open(path) as records:
        for record in records:
            for line in json.loads(record)["text"].split("\n"):
                if line.strip():
                    yield line


def train_tokenizer(corpus: Path, work: Path, vocab_size: int, threads: int) -> Path:
    """A byte-fallback BPE SentencePiece model with the ChatML markers as atomic symbols."""
    work.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=corpus_lines(corpus / "train.jsonl"),
        model_prefix=str(work / "tokenizer"),
        model_type="bpe", vocab_size=vocab_size, byte_fallback=True,
        user_defined_symbols=[IM_START, IM_END], unk_id=0, bos_id=1, eos_id=2, pad_id=3,
        normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
        split_digits=True, allow_whitespace_only_pieces=True, character_coverage=0.9995,
        num_threads=threads, minloglevel=2,
    )
    return work / "tokenizer.model"


def load_tokenizer(model_file: Path) -> LlamaTokenizer:
    """The Hugging Face tokenizer for `model_file`: bos <s>, eos <|im_end|>, ChatML template."""
    folder = model_file.parent
    tokenizer = LlamaTokenizer.from_pretrained(
        folder, legacy=False, add_prefix_space=False, add_bos_token=True, add_eos_token=False,
        bos_token="<s>", eos_token=IM_END, unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens=[IM_START], model_max_length=1024,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    check_tokenizer(tokenizer, spm.SentencePieceProcessor(model_file=str(model_file)))
    return tokenizer


def check_tokenizer(tokenizer: LlamaTokenizer, processor: spm.SentencePieceProcessor) -> None:
    """Fail loudly if the Hugging Face tokenizer and the SentencePiece model disagree."""
    text = f"{IM_START}user\nWhat is  json.dumps()? é 日本 2024{IM_END}\n"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if ids != processor.encode(text) or tokenizer.decode(ids) != text:
        raise RuntimeError(f"tokenizer mismatch: {ids} vs {processor.encode(text)}")
    if tokenizer("x").input_ids[0] != tokenizer.bos_token_id:
        raise RuntimeError("the tokenizer does not add <s>")


def encode_records(path: Path, tokenizer: LlamaTokenizer, seed: int | None) -> list[int]:
    """One token stream: each record as <s> text, prose records closed by </s>.

    Chat records already end in <|im_end|>\\n, exactly as the chat template renders them.
    With a seed the records are shuffled first.
    """
    records = [json.loads(line) for line in open(path)]
    if seed is not None:
        random.Random(seed).shuffle(records)
    return encode_list(records, tokenizer)


def encode_list(records: list[dict], tokenizer: LlamaTokenizer) -> list[int]:
    """The token stream of `records` in their order (see encode_records)."""
    texts = [record["text"] for record in records]
    encoded = tokenizer(texts, add_special_tokens=False, verbose=False).input_ids
    stream = []
    for record, ids in zip(records, encoded):
        closing = [tokenizer.convert_tokens_to_ids("</s>")] if record["kind"] == "prose" else []
        stream += [tokenizer.bos_token_id, *ids, *closing]
    return stream


def make_windows(stream: list[int], seq_len: int) -> torch.Tensor:
    """Non-overlapping training windows of seq_len + 1 tokens (inputs and shifted labels)."""
    count = (len(stream) - 1) // seq_len
    data = torch.tensor(stream[: count * seq_len + 1], dtype=torch.long)
    starts = torch.arange(count) * seq_len
    return torch.stack([data[s : s + seq_len + 1] for s in starts.tolist()])  # (N, seq_len + 1)


def build_model(name: str, tokenizer: LlamaTokenizer, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), max_position_embeddings=1024, rope_theta=10000.0,
        rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        **ARCHITECTURES[name],
    )
    return LlamaForCausalLM(config)


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.45 * (1.0 + math.cos(math.pi * progress)))


def batch_order(count: int, steps: int, batch: int, seed: int) -> torch.Tensor:
    """Window indices for every step: seeded permutations, one per epoch, end to end."""
    generator = torch.Generator().manual_seed(seed)
    epochs = math.ceil(steps * batch / count)
    order = torch.cat([torch.randperm(count, generator=generator) for _ in range(epochs)])
    return order[: steps * batch].view(steps, batch)


def make_optimizer(model: LlamaForCausalLM, peak_lr: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=peak_lr, betas=(0.9, 0.95), eps=1e-8)


def next_token_loss(model: LlamaForCausalLM, batch: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting batch[:, 1:] from batch[:, :-1]."""
    logits = model(input_ids=batch[:, :-1]).logits  # (B, T, V)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten())


def train(model: LlamaForCausalLM, windows: torch.Tensor, args: argparse.Namespace,
          steps: int, peak_lr: float, resume: Path | None = None, probe=None) -> dict[str, float]:
    """Train in place; return tokens seen, wall time and the final smoothed loss.

    With `resume`, the model, optimizer and step are saved there every `args.checkpoint_every`
    steps and picked up from there by a later run with the same settings (the batch order is a
    function of the seed, so a resumed run sees the same batches)."""
    optimizer = make_optimizer(model, peak_lr)
    order = batch_order(len(windows), steps, args.batch, args.seed)
    first, smoothed, spent = 0, None, 0.0
    if resume is not None and resume.is_file():
        state = torch.load(resume, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        first, smoothed, spent = state["step"], state["smoothed"], state["seconds"]
        print(f"resumed at step {first} from {resume}", flush=True)
    model.train()
    start = time.time() - spent
    for step in range(first, steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, peak_lr, warmup=max(1, steps // 20))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss = next_token_loss(model, windows[order[step]])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        smoothed = loss.item() if smoothed is None else 0.95 * smoothed + 0.05 * loss.item()
        if step % args.log_every == 0 or step == steps - 1:
            rate = (step + 1 - first) * args.batch * args.seq_len / (time.time() - start - spent)
            print(f"step {step + 1}/{steps} loss {smoothed:.3f} {rate:.0f} tok/s", flush=True)
        if probe is not None and (step + 1) % getattr(args, "probe_every", 50) == 0:
            print(f"  probe at step {step + 1}: {probe(model)}", flush=True)  # (a resumed run logs from there on)
            model.train()
        every = getattr(args, "checkpoint_every", 0)
        if resume is not None and every and (step + 1) % every == 0 and step + 1 < steps:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step + 1,
                        "smoothed": smoothed, "seconds": time.time() - start}, resume.with_suffix(".tmp"))
            resume.with_suffix(".tmp").replace(resume)
    model.eval()
    return {"tokens_seen": steps * args.batch * args.seq_len,
            "train_seconds": round(time.time() - start, 1), "final_train_loss": round(smoothed, 4)}


def save_checkpoint(model: LlamaForCausalLM, tokenizer: LlamaTokenizer, model_file: Path,
                    folder: Path) -> None:
    """An fp16 Hugging Face folder: weights, config, generation config and tokenizer files."""
    if folder.exists():
        shutil.rmtree(folder)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("</s>")],
    )
    model.to(torch.float16).save_pretrained(folder)
    model.to(torch.float32)
    tokenizer.save_pretrained(folder)
    shutil.copyfile(model_file, folder / "tokenizer.model")
    for path in folder.iterdir():
        path.chmod(0o644)  # safetensors writes 0600; package data must be world-readable


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path("/tmp/tiny_corpus"))
    bundled = Path(__file__).resolve().parents[1] / "edgegen" / "_bundled"
    parser.add_argument("--out", type=Path, default=bundled)
    parser.add_argument("--work", type=Path, default=Path("/tmp/tiny_work"))
    parser.add_argument("--eval-json", type=Path, default=Path("/tmp/tiny_eval.json"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--chat-steps", type=int, default=2000)
    parser.add_argument("--draft-steps", type=int, default=1100)
    parser.add_argument("--eval-windows", type=int, default=192)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--no-bf16", dest="bf16", action="store_false", help="train in fp32")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    model_file = train_tokenizer(args.corpus, args.work, args.vocab_size, args.threads)
    tokenizer = load_tokenizer(model_file)
    train_windows = make_windows(encode_records(args.corpus / "train.jsonl", tokenizer, args.seed),
                                 args.seq_len)
    heldout_windows = make_windows(encode_records(args.corpus / "heldout.jsonl", tokenizer, None),
                                   args.seq_len)[: args.eval_windows]
    print(f"windows: {len(train_windows)} train, {len(heldout_windows)} held out", flush=True)
    stats = {}
    for name, steps in (("tiny-chat", args.chat_steps), ("tiny-draft", args.draft_steps)):
        model = build_model(name, tokenizer, args.seed)
        print(f"{name}: {model.num_parameters():,} parameters, {steps} steps", flush=True)
        stats[name] = train(model, train_windows, args, steps, PEAK_LR[name])
        stats[name].update(steps=steps, peak_lr=PEAK_LR[name], train_windows=len(train_windows))
        save_checkpoint(model, tokenizer, model_file, args.out / name)
    report = tiny_eval.evaluate_and_document(args.out, heldout_windows, stats, vars(args))
    report["total_wall_seconds"] = round(time.time() - started, 1)
    args.eval_json.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
