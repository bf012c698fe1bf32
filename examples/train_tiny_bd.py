"""Adapt the bundled `tiny-chat` (Llama, autoregressive) into `tiny-chat-bd`, a block-diffusion
chat model in SDAR's Hugging Face layout (Qwen3 layers, block-causal attention, a mask token).

    python examples/tiny_corpus.py --out /tmp/tiny_corpus      # once, if not built yet
    python examples/train_tiny_bd.py --corpus /tmp/tiny_corpus --out edgegen/_bundled/tiny-chat-bd

Steps (SDAR / Fast-dLLM v2 recipe, scaled down; the objective is in tiny_bd_objective.py):
1. start from tiny-chat's weights under Qwen3 names; Qwen3's per-head q_norm / k_norm, which Llama
   lacks, are set so that q_norm(q) ≈ q (calibrated on training text, see `calibrate_qk_norms`);
   a `<|MASK|>` token is appended to the vocabulary (id 8192, embedding = the mean embedding);
2. data: tiny-chat's greedy replies to the training split's chat questions (sequence-level
   distillation, tiny_bd_distill.py), packed SFT-style (prompt never masked, reply followed by
   <|im_end|> padding), plus prose windows;
3. train with the masked block objective: [x_t ; x_0] under BD3-LM's block-diffusion mask, each
   block masked at its own ratio t ~ U(0, 1), each window also with the complementary mask,
   cross-entropy on the masked positions of x_t predicting x_0 with no shift (row p predicts p);
   block sizes drawn per window from BLOCK_SIZES, so one checkpoint serves all of them;
4. save fp16 in SDAR's layout (config.json with `model_type: "sdar"`, `block_size`,
   `mask_token_id`), then measure it with edgegen and write its model card (tiny_bd_eval.py).
5. later rounds (`--init` the previous folder, `--replies` tiny_bd_self_distill.py's records):
   self-distillation, the model trained on its own replies where tiny-chat finds them as good as
   its own (see tiny-chat-bd's card for the rounds run and the commands).
The first training takes about 80 minutes on a 2-core AVX2 CPU: 24 distilling (cached in /tmp
afterwards), then 800 steps of 4.2 s on one thread in fp32 (2.3 s on two; about 1.4 s in bf16 on
an AVX-512 Xeon). Seeded; a run reproduces at the same thread count.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import tiny_bd_distill
import tiny_bd_objective as objective
import tiny_bd_probe
import torch
from train_tiny import (
    batch_order,
    encode_records,
    learning_rate,
    make_optimizer,
    make_windows,
    save_checkpoint,
)
from transformers import AutoTokenizer, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

REPO = Path(__file__).resolve().parents[1]
START = REPO / "edgegen" / "_bundled" / "tiny-chat"
MASK_TOKEN = "<|MASK|>"  # SDAR's spelling
BLOCK_SIZES = (4, 8, 32)  # drawn uniformly per training window
DEFAULT_BLOCK_SIZE = 8  # written to config.json; see the model card for why


# ---------------------------------------------------------------------------- the starting point
def load_start(folder: Path):
    """tiny-chat in fp32, and its tokenizer with the mask token appended."""
    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_special_tokens({"mask_token": MASK_TOKEN})
    if tokenizer.mask_token_id != model.config.vocab_size:
        raise RuntimeError(f"the mask token got id {tokenizer.mask_token_id}, not {model.config.vocab_size}")
    return model, tokenizer


def qwen3_config(llama, tokenizer, block_size: int) -> Qwen3Config:
    c = llama.config
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim, hidden_act=c.hidden_act,
        max_position_embeddings=c.max_position_embeddings, rms_norm_eps=c.rms_norm_eps,
        rope_parameters=dict(c.rope_parameters), tie_word_embeddings=True, attention_bias=False,
        bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id,
    )
    config.block_size, config.mask_token_id = block_size, tokenizer.mask_token_id
    return config


def copy_llama_weights(llama: LlamaForCausalLM, model, fill) -> None:
    """Copy tiny-chat's weights into `model` by name (the Qwen layouts use Llama's names), with one
    more embedding row for the mask: the mean embedding. A weight tiny-chat lacks is left to
    `fill(name, param)`, which returns False where it may not be missing."""
    source = llama.state_dict()
    with torch.no_grad():
        for name, param in model.state_dict().items():
            if name == "model.embed_tokens.weight":
                old = source[name]
                param[: len(old)] = old
                param[len(old):] = old.mean(0)
            elif name == "lm_head.weight":
                continue  # tied to the embedding
            elif name in source:
                param.copy_(source[name])
            elif not fill(name, param):
                raise RuntimeError(f"no source for {name}")
    model.tie_weights()


def to_qwen3(llama: LlamaForCausalLM, tokenizer, block_size: int) -> Qwen3ForCausalLM:
    """tiny-chat's weights under Qwen3 names (the names are the same; Qwen3 adds q_norm / k_norm,
    left at 1 here), with one more embedding row for the mask: the mean embedding."""
    model = Qwen3ForCausalLM(qwen3_config(llama, tokenizer, block_size)).eval()
    copy_llama_weights(llama, model, lambda name, _param: name.endswith(("q_norm.weight", "k_norm.weight")))
    return model


@torch.no_grad()
def calibrate_qk_norms(llama: LlamaForCausalLM, model: Qwen3ForCausalLM, windows: torch.Tensor) -> dict:
    """Set each layer's q_norm / k_norm weight w so that w ⊙ x / rms(x) ≈ x for that layer's query
    and key heads x (before RoPE) on training text: per dimension d, the least-squares
    w_d = E[x_d² / r] / E[x_d² / r²], with r = sqrt(mean(x²) + eps) over the head, pooled over
    heads and tokens. Llama has no such norm; this keeps the adapted model close to tiny-chat."""
    found, hooks, c = {}, [], llama.config
    for i, layer in enumerate(llama.model.layers):
        for kind in ("q", "k"):
            proj = getattr(layer.self_attn, f"{kind}_proj")
            hooks.append(proj.register_forward_hook(
                lambda _m, _i, out, key=(i, kind): found.setdefault(key, []).append(out.detach())))
    llama(input_ids=windows)
    for hook in hooks:
        hook.remove()
    summary = {}
    for (i, kind), outs in found.items():
        x = torch.cat(outs).reshape(-1, c.head_dim).double()  # (tokens · heads, Dh)
        r = (x.pow(2).mean(-1, keepdim=True) + c.rms_norm_eps).sqrt()
        w = (x.pow(2) / r).mean(0) / (x.pow(2) / r.pow(2)).mean(0)
        getattr(model.model.layers[i].self_attn, f"{kind}_norm").weight.copy_(w.float())
        summary[f"layer{i}.{kind}"] = round(float(r.mean()), 3)
    return summary


@torch.no_grad()
def causal_perplexity(model, windows: torch.Tensor, batch: int = 8) -> float:
    """Next-token perplexity with the ordinary causal mask (how close the start is to tiny-chat)."""
    nll, count = 0.0, 0
    for s in range(0, len(windows), batch):
        w = windows[s:s + batch]
        logits = model(input_ids=w[:, :-1]).logits.float()  # (B, L - 1, V)
        nll += torch.nn.functional.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten(), reduction="sum").item()
        count += w[:, 1:].numel()
    return round(math.exp(nll / count), 3)


# ---------------------------------------------------------------------------- training
def train(model: Qwen3ForCausalLM, windows: torch.Tensor, maskable: torch.Tensor, heldout: torch.Tensor,
          mask_id: int, args: argparse.Namespace, probe=None, loss_fn=None) -> dict:
    """Train in place on the masked block objective; returns the figures and the loss curve.
    `probe`, when given, is called every --probe-every steps and its figures are kept in the curve;
    `loss_fn` is the objective's loss (tiny_bd_shifted.py passes its shifted one); by default
    tiny_bd_objective.masked_loss, looked up at the call, so a patched objective is the one trained."""
    loss_fn = loss_fn or objective.masked_loss
    optimizer = make_optimizer(model, args.lr)
    order = batch_order(len(windows), args.steps, args.batch, args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    first, smoothed, curve, spent = 0, None, [], 0.0
    unkeyed = ("threads", "report", "card", "log_every", "checkpoint_every", "out", "probe_every", "probe_questions")  # a resumed run may change these
    key = json.dumps({k: str(v) for k, v in vars(args).items() if k not in unkeyed}, sort_keys=True)
    state = torch.load(args.checkpoint, weights_only=True) if args.checkpoint and args.checkpoint.is_file() else None
    if state is not None and state.get("key") == key:  # resume: same settings, same batches and masks from here
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        first, smoothed, curve, spent = state["step"], state["smoothed"], state["curve"], state["seconds"]
        print(f"resumed at step {first} from {args.checkpoint}", flush=True)
    start = time.time() - spent
    model.train()
    for step in range(first, args.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, warmup=max(1, args.steps // 20))
        batch = objective.noisy_batch(windows[order[step]], maskable[order[step]], BLOCK_SIZES, mask_id, generator,
                                      t_min=args.t_min, suffix_share=args.suffix_share)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss = loss_fn(model, batch, args.certainty, args.certainty_temperature)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        smoothed = loss.item() if smoothed is None else 0.95 * smoothed + 0.05 * loss.item()
        if step % args.log_every == 0 or step == args.steps - 1:
            elapsed = time.time() - start
            print(f"step {step + 1}/{args.steps} loss {smoothed:.3f} {elapsed / (step + 1):.2f} s/step", flush=True)
            curve.append({"step": step + 1, "loss": round(smoothed, 4), "seconds": round(elapsed, 1)})
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            curve[-1]["heldout"] = objective.heldout_losses(model, heldout, mask_id, BLOCK_SIZES, args.seed)
            print("  held out:", curve[-1]["heldout"], flush=True)
            model.train()
        if probe is not None and args.probe_every and (step + 1) % args.probe_every == 0:
            curve[-1]["probe"] = probe(model)
            print("  probe:", curve[-1]["probe"], flush=True)
        if args.checkpoint and args.checkpoint_every and (step + 1) % args.checkpoint_every == 0 \
                and step + 1 < args.steps:
            tmp = args.checkpoint.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "generator": generator.get_state(), "step": step + 1, "smoothed": smoothed,
                        "curve": curve, "seconds": time.time() - start, "key": key}, tmp)
            tmp.replace(args.checkpoint)
    model.eval()
    return {"steps": args.steps, "train_seconds": round(time.time() - start, 1),
            "final_train_loss": round(smoothed, 4), "curve": curve}


def load_sdar(folder: Path) -> Qwen3ForCausalLM:
    """A saved tiny-chat-bd folder (SDAR layout) as Qwen3ForCausalLM in fp32."""
    config = json.loads((folder / "config.json").read_text())
    block_size, mask_id = config.pop("block_size"), config.pop("mask_token_id")
    for key in ("model_type", "architectures"):
        config.pop(key, None)
    model = Qwen3ForCausalLM.from_pretrained(folder, config=Qwen3Config(**config), dtype=torch.float32)
    model.config.block_size, model.config.mask_token_id = block_size, mask_id
    return model.eval()


# ---------------------------------------------------------------------------- saving
def save_sdar(model: Qwen3ForCausalLM, tokenizer, folder: Path) -> None:
    """An fp16 folder in SDAR's layout: Qwen3 weight names, config.json with model_type "sdar",
    block_size and mask_token_id; tokenizer.json with the mask token (no tokenizer.model, which
    cannot hold it), the ChatML template, tiny-chat's eos ids in generation_config.json."""
    save_checkpoint(model, tokenizer, START / "tokenizer.model", folder)  # tiny-chat's recipe, then:
    (folder / "tokenizer.model").unlink()
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="sdar", architectures=["SDARForCausalLM"], block_size=model.config.block_size,
                  mask_token_id=model.config.mask_token_id)
    (folder / "config.json").write_text(json.dumps(dict(sorted(config.items())), indent=2) + "\n")


def check_tokenizer(folder: Path, start: Path) -> None:
    """The shipped tokenizer encodes text exactly as tiny-chat's does, knows the mask token and
    renders the same chat prompt."""
    new, old = AutoTokenizer.from_pretrained(folder), AutoTokenizer.from_pretrained(start)
    text = "The json module:\n  json.dumps(obj, indent=4)  # → str, 100 % ok\n日本<|im_end|>"
    if new(text).input_ids != old(text).input_ids or new.decode(new(text, add_special_tokens=False).input_ids) != text:
        raise RuntimeError("the new tokenizer does not encode like tiny-chat's")
    if new.convert_tokens_to_ids(MASK_TOKEN) != len(old) or new(MASK_TOKEN, add_special_tokens=False).input_ids != [len(old)]:
        raise RuntimeError("the mask token is not one token with the next id")
    chat = [{"role": "user", "content": "Hi"}]
    if new.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) != \
            old.apply_chat_template(chat, tokenize=False, add_generation_prompt=True):
        raise RuntimeError("the chat template changed")


# ---------------------------------------------------------------------------- main
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path("/tmp/tiny_corpus"))
    parser.add_argument("--start", type=Path, default=START)
    parser.add_argument("--out", type=Path, default=REPO / "edgegen" / "_bundled" / "tiny-chat-bd")
    parser.add_argument("--report", type=Path, default=Path("/tmp/tiny_bd_train.json"))
    parser.add_argument("--threads", type=int, default=1, help="1 reproduces the shipped weights")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4, help="windows per step (each also complemented)")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--chat-share", type=float, default=0.85,
                        help="share of training windows cut from the chat records (the rest: prose)")
    parser.add_argument("--distill", type=int, default=20000,
                        help="chat questions answered by tiny-chat (greedy) to train on instead of the "
                             "corpus's answers; 0 keeps the corpus's chat records")
    parser.add_argument("--distill-cache", type=Path, default=Path("/tmp/tiny_bd_distill.jsonl"))
    parser.add_argument("--certainty", type=float, default=1.0,
                        help="weight of dParallel's certainty-forcing entropy term (0: plain masked cross-entropy)")
    parser.add_argument("--certainty-temperature", type=float, default=1.0)
    parser.add_argument("--t-min", type=float, default=0.0, help="masking ratios are drawn from U(t-min, 1)")
    parser.add_argument("--suffix-share", type=float, default=0.0,
                        help="share of blocks masked as a suffix (as decoding leaves them) rather than at random")
    parser.add_argument("--replies", type=Path, default=None,
                        help="chat records (jsonl) to train on instead of tiny-chat's greedy replies, "
                             "e.g. tiny_bd_self_distill.py's")
    parser.add_argument("--init", type=Path, default=None,
                        help="continue from a saved tiny-chat-bd folder instead of adapting tiny-chat")
    parser.add_argument("--probe-every", type=int, default=0,
                        help="decode held-out questions every N steps (tiny_bd_probe.py): tokens per forward, "
                             "perplexity under tiny-chat")
    parser.add_argument("--probe-questions", type=int, default=48)
    parser.add_argument("--checkpoint", type=Path, default=Path("/tmp/tiny_bd_train.pt"),
                        help="saved every --checkpoint-every steps; a re-run with the same settings resumes")
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--eval-windows", type=int, default=32)
    parser.add_argument("--eval-every", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--bf16", action="store_true",
                        help="bf16 autocast (fast only on CPUs with AVX-512 BF16 or AMX; the shipped weights are fp32-trained)")
    parser.add_argument("--no-card", dest="card", action="store_false", help="skip the edgegen evaluation")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.time()
    llama, tokenizer = load_start(args.start)
    records = [json.loads(line) for line in (args.corpus / "train.jsonl").read_text().splitlines()]
    random.Random(args.seed).shuffle(records)
    distilled, distill_seconds = [], 0.0
    if args.replies:  # a second stage's data, e.g. tiny_bd_self_distill.py's
        distilled = [json.loads(line) for line in args.replies.read_text().splitlines()]
        records = [r for r in records if r["kind"] == "prose"] + distilled
    elif args.distill:
        distilled, distill_seconds = tiny_bd_distill.distill(args.start, records, args.distill, args.distill_cache)
        print(f"distilled replies kept: {len(distilled)} ({time.time() - started:.0f} s)", flush=True)
        records = [r for r in records if r["kind"] == "prose"] + distilled
    windows, maskable = objective.training_windows(records, tokenizer, args.seq_len, args.chat_share, args.seed,
                                                   pad_to=max(BLOCK_SIZES))
    heldout = make_windows(encode_records(args.corpus / "heldout.jsonl", tokenizer, None),
                           args.seq_len)[: args.eval_windows, :-1]
    print(f"windows: {len(windows)} train, {len(heldout)} held out", flush=True)
    report: dict = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                    "block_sizes": BLOCK_SIZES, "mask_token": MASK_TOKEN, "mask_token_id": tokenizer.mask_token_id,
                    "distilled": len(distilled), "distill_seconds": distill_seconds, "windows": len(windows)}
    if args.init:  # a later round: the first stage's figures stay in its own report
        model = load_sdar(args.init)
        report["start"] = {"init": str(args.init)}
        stats = args.replies.with_suffix(".json") if args.replies else None
        if stats and stats.is_file():  # tiny_bd_self_distill.py's figures
            report["replies"] = json.loads(stats.read_text())
    else:
        model = to_qwen3(llama, tokenizer, DEFAULT_BLOCK_SIZE)
        report["start"] = {"tiny_chat_causal_ppl": causal_perplexity(llama, heldout),
                           "adapted_causal_ppl_norms_at_1": causal_perplexity(model, heldout)}
        report["qk_rms"] = calibrate_qk_norms(llama, model, windows[-16:])  # prose windows
        report["start"]["adapted_causal_ppl_calibrated"] = causal_perplexity(model, heldout)
    report["start"]["heldout"] = objective.heldout_losses(model, heldout, tokenizer.mask_token_id, BLOCK_SIZES,
                                                          args.seed)
    print("start:", json.dumps(report["start"]), flush=True)
    probe = None
    if args.probe_every:
        stops = tiny_bd_probe.stop_ids(tokenizer)
        sets = {"heldout": tiny_bd_probe.heldout_questions(args.corpus, args.probe_questions),
                "train": [tiny_bd_probe.question(r["text"]) for r in distilled[: args.probe_questions // 2]]}
        ar_replies = {k: [tiny_bd_probe.greedy_ar(llama, tiny_bd_probe.prompt_ids(tokenizer, q), stops) for q in qs]
                      for k, qs in sets.items()}

        def probe(m):  # held-out questions, and (memorisation) questions the model trains on
            return {k: tiny_bd_probe.probe(m, llama, tokenizer, qs, ar_replies=ar_replies[k]) for k, qs in sets.items()}

        report["start"]["probe"] = probe(model)
        print("  probe:", report["start"]["probe"], flush=True)
    else:
        del llama
    report["train"] = train(model, windows, maskable, heldout, tokenizer.mask_token_id, args, probe)
    report["end"] = {"heldout": objective.heldout_losses(model, heldout, tokenizer.mask_token_id, BLOCK_SIZES,
                                                         args.seed)}
    print("end:", json.dumps(report["end"]), flush=True)
    report["parameters"] = model.num_parameters()
    save_sdar(model, tokenizer, args.out)
    check_tokenizer(args.out, args.start)
    report["train_wall_seconds"] = round(time.time() - started, 1)  # distillation excluded when cached
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    if args.card:
        import tiny_bd_eval

        tiny_bd_eval.evaluate_and_document(args.out, report)


if __name__ == "__main__":
    main()
