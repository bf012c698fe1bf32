"""The masked block-diffusion objective of tiny-chat-bd (SDAR / Fast-dLLM v2 / BD3-LM style).

A training window x_0 of L tokens is cut into blocks of B tokens. Each block gets its own masking
ratio t ~ U(0, 1) and each of its tokens is replaced by the mask with probability t, giving x_t;
the complementary mask (the masked positions swapped) gives x_t', so every token is predicted once
per step. BD3-LM feeds [x_t ; x_0] (2L tokens, positions 0..L-1 twice) under its `block_diff_mask`:

                 keys x_t            keys x_0
    x_t rows   same block only     earlier blocks only      (a noisy block sees clean history)
    x_0 rows   nothing             block-causal             (clean history, as the KV cache holds it)

The x_0 rows never see x_t, so their states are the same for both copies: here the window is fed
once as [x_t ; x_t' ; x_0] (3L tokens), each noisy copy seeing only itself and x_0 exactly as in
BD3-LM's mask, which saves a quarter of the compute of two [x_t ; x_0] sequences. Cross-entropy on
the masked positions of x_t and x_t', predicting x_0 at the same position (no logit shift: row p
predicts token p, as SDAR does).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from train_tiny import make_windows


def block_diff_mask(length: int, block: int, noisy_copies: int = 1) -> torch.Tensor:
    """(S, S) bool with S = (noisy_copies + 1) · L, True where a query (row) may attend to a key
    (column). Segments 0 … noisy_copies − 1 are noisy copies, the last is x_0; with one noisy copy
    this is BD3-LM's `block_diff_mask`."""
    idx = torch.arange((noisy_copies + 1) * length)
    segment, blk = idx // length, (idx % length) // block
    clean = segment == noisy_copies
    q_seg, k_seg, q_blk, k_blk = segment[:, None], segment[None, :], blk[:, None], blk[None, :]
    q_clean, k_clean = clean[:, None], clean[None, :]
    own_block = ~q_clean & (q_seg == k_seg) & (q_blk == k_blk)  # block-diagonal over each x_t
    history = ~q_clean & k_clean & (q_blk > k_blk)  # offset block-causal, x_t → x_0
    causal = q_clean & k_clean & (q_blk >= k_blk)  # block-causal over x_0
    return own_block | history | causal


def training_windows(records: list[dict], tokenizer, seq_len: int, chat_share: float, seed: int,
                     pad_to: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(windows, maskable): (N, seq_len) token ids and where the objective may put masks.

    Chat records as in SDAR's / Fast-dLLM v2's fine-tuning: the prompt is never masked; the reply
    is followed by <|im_end|> repeated up to a multiple of `pad_to` tokens (so the model learns that
    everything after the end is the end, whichever block size it decodes with) and only the reply
    and that padding are masked; whole records are packed into windows, the rest filled with <pad>.
    Prose: windows cut from one stream, as train_tiny.py cuts them, masked anywhere. Enough prose
    windows, drawn with the seed, to make chat `chat_share` of the windows."""
    chat, chat_maskable = chat_windows([r for r in records if r["kind"] == "chat"], tokenizer, seq_len, pad_to)
    prose = make_windows(encode([r for r in records if r["kind"] == "prose"], tokenizer), seq_len)[:, :-1]
    wanted = min(len(prose), round(len(chat) * (1 - chat_share) / chat_share))
    picked = torch.tensor(sorted(random.Random(seed).sample(range(len(prose)), wanted)), dtype=torch.long)
    return torch.cat([chat, prose[picked]]), torch.cat([chat_maskable, torch.ones(wanted, seq_len, dtype=torch.bool)])


def chat_windows(records: list[dict], tokenizer, seq_len: int, pad_to: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Chat records, each `<s>` + prompt (tokenized as the chat template renders it) + reply +
    <|im_end|> padding, packed whole into windows; the maskable part is the reply and padding."""
    end, pad = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.pad_token_id
    header = "<|im_start|>assistant\n"
    prompts, replies = zip(*[(r["text"].split(header)[0] + header, r["text"].split(header)[1]) for r in records])
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False, verbose=False).input_ids
    reply_ids = tokenizer([r.removesuffix("\n").removesuffix("<|im_end|>") for r in replies],
                          add_special_tokens=False, verbose=False).input_ids
    windows, maskable, ids, can = [], [], [], []
    for p, r in zip(prompt_ids, reply_ids):
        record = [tokenizer.bos_token_id, *p, *r, end]
        padding = -len(record) % pad_to
        if len(record) + padding > seq_len:
            continue
        if len(ids) + len(record) + padding > seq_len:
            windows.append(ids + [pad] * (seq_len - len(ids)))
            maskable.append(can + [False] * (seq_len - len(can)))
            ids, can = [], []
        ids += record + [end] * padding
        can += [False] * (1 + len(p)) + [True] * (len(r) + 1 + padding)
    return torch.tensor(windows), torch.tensor(maskable)


def encode(records: list[dict], tokenizer) -> list[int]:
    """One token stream of prose records: each as <s> text </s>."""
    encoded = tokenizer([r["text"] for r in records], add_special_tokens=False, verbose=False).input_ids
    stream = []
    for ids in encoded:
        stream += [tokenizer.bos_token_id, *ids, tokenizer.convert_tokens_to_ids("</s>")]
    return stream


def noisy_batch(x0: torch.Tensor, maskable: torch.Tensor, block_sizes: Sequence[int], mask_id: int,
                generator: torch.Generator, t_min: float = 0.0, suffix_share: float = 0.0) -> dict[str, torch.Tensor]:
    """Inputs [x_t ; x_t' ; x_0], attention bias and labels for the windows x0 (N, L), masks only
    where `maskable` (N, L), each window with a block size drawn from `block_sizes`.

    Each block's ratio is t ~ U(t_min, 1). With `suffix_share` > 0 that share of the blocks is
    masked as decoding leaves them, its last ⌈t · B⌉ positions, rather than at random places: the
    left of a block is usually decided first, and the threshold rule needs confidence in the
    masked run to its right."""
    n, length = x0.shape
    sizes = torch.tensor(block_sizes)[torch.randint(len(block_sizes), (n,), generator=generator)]
    masks, allowed = [], []
    for size in sizes.tolist():
        blocks = -(-length // size)
        t = t_min + (1 - t_min) * torch.rand(blocks, generator=generator)
        scattered = torch.rand(length, generator=generator) < t.repeat_interleave(size)[:length]
        if suffix_share > 0:
            offset = (torch.arange(length) % size).float()
            suffix = offset >= size - torch.ceil(t * size).repeat_interleave(size)[:length]
            pick = (torch.rand(blocks, generator=generator) < suffix_share).repeat_interleave(size)[:length]
            scattered = torch.where(pick, suffix, scattered)
        masks.append(scattered)
        allowed.append(block_diff_mask(length, size, noisy_copies=2))
    first = torch.stack(masks)
    masked = torch.cat([first & maskable, ~first & maskable], dim=1)  # (N, 2L): x_t's mask, then its complement
    clean = x0.repeat(1, 2)  # (N, 2L)
    noisy = torch.where(masked, torch.full_like(clean, mask_id), clean)
    bias = torch.zeros(n, 1, 3 * length, 3 * length).masked_fill(~torch.stack(allowed)[:, None], float("-inf"))
    return {
        "input_ids": torch.cat([noisy, x0], dim=1),  # (N, 3L)
        "position_ids": torch.arange(length).repeat(3)[None].expand(n, -1),  # (N, 3L)
        "attention_mask": bias,  # (N, 1, 3L, 3L)
        "labels": torch.where(masked, clean, torch.full_like(clean, -100)),  # (N, 2L)
        "block_sizes": sizes,  # (N,): each window's block size (a shifted loss needs where blocks start)
    }


def masked_loss(model, batch: dict[str, torch.Tensor], certainty: float = 0.0,
                temperature: float = 1.0) -> torch.Tensor:
    """Mean cross-entropy over the masked positions of x_t and x_t'; the LM head runs on those rows only.

    With `certainty` > 0, plus that weight times the certainty-forcing term of dParallel
    (arXiv 2509.26488): the mean entropy of softmax(logits / temperature) over the masked positions
    the model already predicts correctly (argmax = label). Cross-entropy keeps the predictions on
    the teacher's tokens; the entropy term makes the right ones confident early, with many
    neighbours still masked, which is what lets a threshold commit several tokens per forward."""
    hidden = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         position_ids=batch["position_ids"]).last_hidden_state  # (N, 3L, H)
    labels = batch["labels"]
    rows = hidden[:, : labels.shape[1]][labels != -100]  # (masked, H)
    logits = model.lm_head(rows).float()  # (masked, V)
    targets = labels[labels != -100]
    loss = torch.nn.functional.cross_entropy(logits, targets)
    if certainty > 0:
        right = logits.argmax(-1) == targets
        if right.any():
            log_p = torch.log_softmax(logits[right] / temperature, -1)
            loss = loss + certainty * -(log_p.exp() * log_p).sum(-1).mean()
    return loss


@torch.no_grad()
def heldout_losses(model, windows: torch.Tensor, mask_id: int, block_sizes: Sequence[int], seed: int,
                   batch: int = 8) -> dict[str, float]:
    """Masked cross-entropy on held-out windows for each block size (same masks every call)."""
    model.eval()
    out = {}
    for size in block_sizes:
        generator = torch.Generator().manual_seed(seed + size)
        total, count = 0.0, 0
        for s in range(0, len(windows), batch):
            x0 = windows[s:s + batch]
            b = noisy_batch(x0, torch.ones_like(x0, dtype=torch.bool), (size,), mask_id, generator)
            k = int((b["labels"] != -100).sum())
            total += masked_loss(model, b).item() * k
            count += k
        out[f"B{size}"] = round(total / count, 4)
    return out
