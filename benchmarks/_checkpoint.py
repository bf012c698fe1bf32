"""Build a Qwen2.5-0.5B-shaped Hugging Face checkpoint with random weights, once, and cache it.

The weights are random (speed does not depend on their values), but the shapes, the tied
embeddings, the RoPE base and the non-zero q/k/v biases match Qwen2.5-0.5B, so every engine has
to carry the same work as on the real model. The tokenizer is a small Qwen2-style byte-level BPE
trained here on local text; its vocabulary is smaller than the model's 151,936 rows.
"""

from __future__ import annotations

import json
import shutil
import sys
import sysconfig
import time
from pathlib import Path

CACHE_ROOT = Path.home() / ".cache" / "edgegen-bench"
CHECKPOINT_NAME = "qwen05b-shape"
TOKENIZER_VOCAB = 8192
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
DONE_MARKER = ".complete"

# Same split regex as Qwen2's tokenizer.json.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)

QWEN05B_SHAPE = dict(
    hidden_size=896,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    intermediate_size=4864,
    vocab_size=151936,
    tie_word_embeddings=True,
    max_position_embeddings=32768,
    rms_norm_eps=1e-6,
    hidden_act="silu",
    use_sliding_window=False,
    sliding_window=32768,
    max_window_layers=21,
)
ROPE_THETA = 1_000_000.0


def log(msg: str) -> None:
    print(f"[checkpoint] {msg}", file=sys.stderr, flush=True)


def checkpoint_dir(root: Path = CACHE_ROOT) -> Path:
    return root / CHECKPOINT_NAME


def ensure_checkpoint(root: Path = CACHE_ROOT, dtype: str = "bfloat16") -> Path:
    """Return the cached checkpoint folder, building it first if it is missing or incomplete."""
    out = checkpoint_dir(root)
    if (out / DONE_MARKER).exists():
        log(f"using cached {out}")
        return out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    special = build_tokenizer(out)
    build_model(out, special, dtype)
    (out / DONE_MARKER).write_text(json.dumps({"seconds": time.perf_counter() - t0}))
    log(f"done in {time.perf_counter() - t0:.1f} s -> {out}")
    return out


def training_files(max_bytes: int = 6_000_000) -> list[str]:
    """Local text to train the BPE on: the Python standard library's sources."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files, total = [], 0
    for path in sorted(stdlib.glob("*.py")):
        files.append(str(path))
        total += path.stat().st_size
        if total >= max_bytes:
            break
    return files


def build_tokenizer(out: Path) -> dict[str, int]:
    """Train a Qwen2-style byte-level BPE and save it; return the special tokens' ids."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    t0 = time.perf_counter()
    files = training_files()
    log(f"training a {TOKENIZER_VOCAB}-token byte-level BPE on {len(files)} stdlib files ...")
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train(files, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        chat_template=CHATML,
        model_max_length=32768,
    )
    fast.save_pretrained(out)
    patch_json(out / "tokenizer_config.json", tokenizer_class="Qwen2Tokenizer", bos_token=None)
    special = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    log(f"tokenizer: {tok.get_vocab_size()} tokens, specials {special} "
        f"({time.perf_counter() - t0:.1f} s)")
    return special


def build_model(out: Path, special: dict[str, int], dtype: str) -> None:
    """Random-weight Qwen2ForCausalLM with Qwen2.5-0.5B's shapes and non-zero q/k/v biases."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    t0 = time.perf_counter()
    torch.manual_seed(0)
    config = Qwen2Config(
        **QWEN05B_SHAPE,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        bos_token_id=special["<|endoftext|>"],
        eos_token_id=special["<|im_end|>"],
        pad_token_id=special["<|endoftext|>"],
    )
    log("initialising Qwen2ForCausalLM (24 layers, hidden 896, vocab 151936) ...")
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0.0, 0.02)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{n_params / 1e6:.1f} M parameters ({time.perf_counter() - t0:.1f} s); "
        f"saving as {dtype} safetensors ...")
    model.to(getattr(torch, dtype)).save_pretrained(out, safe_serialization=True)
    GenerationConfig(
        bos_token_id=special["<|endoftext|>"],
        eos_token_id=[special["<|im_end|>"], special["<|endoftext|>"]],
        pad_token_id=special["<|endoftext|>"],
        do_sample=False,
    ).save_pretrained(out)
    # Hub checkpoints of Qwen2.5 carry a top-level rope_theta; older converters read only that.
    patch_json(out / "config.json", rope_theta=ROPE_THETA, torch_dtype=dtype)
    size = sum(f.stat().st_size for f in out.glob("*.safetensors")) / 2**20
    log(f"saved {size:.0f} MiB of weights ({time.perf_counter() - t0:.1f} s)")


def patch_json(path: Path, **updates: object) -> None:
    data = json.loads(path.read_text())
    for key, value in updates.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def regular_vocab_size(ckpt: Path) -> int:
    """Number of ordinary (non-special) tokens the tokenizer can produce: ids [len(specials), n)."""
    vocab = json.loads((ckpt / "tokenizer.json").read_text())["model"]["vocab"]
    return len(vocab)


def prompt_ids(ckpt: Path, length: int, seed: int) -> list[int]:
    """Fixed random prompt: `length` ordinary token ids drawn with `seed`, same for every engine."""
    import numpy as np

    n_special = len(SPECIAL_TOKENS)  # the trainer puts the specials first: ids 0..2
    rng = np.random.default_rng(seed)
    return rng.integers(n_special, regular_vocab_size(ckpt), size=length).tolist()


if __name__ == "__main__":
    ensure_checkpoint()
