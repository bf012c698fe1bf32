"""Tiny Hugging Face checkpoints built in-process: a BPE tokenizer trained on local text and
random-weight transformers models saved with `save_pretrained`. No network."""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
VOCAB = 384

# One tiny config per architecture (the shared table of the house style).
ARCH_CONFIGS = {
    "llama": dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
                  tie_word_embeddings=False),
    "mistral": dict(tie_word_embeddings=False, head_dim=32, sliding_window=400),
    "qwen2": dict(tie_word_embeddings=True, rope_theta=1e6),
    "qwen3": dict(tie_word_embeddings=True, head_dim=32),
}
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6)


def corpus() -> list[str]:
    """Some English text that is on every machine: the docstrings of Python's standard library."""
    import collections, json, textwrap  # noqa: E401

    docs = [m.__doc__ or "" for m in (collections, json, textwrap, Path)]
    docs += [f"The number {i} follows {i - 1} and comes before {i + 1}." for i in range(1, 200)]
    return docs


def train_tokenizer(folder: Path):
    """A byte-level BPE with ChatML special tokens, saved as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    return fast


def build_checkpoint(arch: str, folder: Path, seed: int = 0):
    """Save a random tiny `arch` model plus tokenizer into `folder`; returns the torch model."""
    import torch
    import transformers

    config_cls = transformers.AutoConfig.for_model(arch, **COMMON, **ARCH_CONFIGS[arch])
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config_cls, dtype=torch.float32).eval()
    with torch.no_grad():  # random biases and norms, so every parameter matters to parity
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    tokenizer = train_tokenizer(folder)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    return model


def train_sentencepiece(folder: Path) -> None:
    """A bare SentencePiece `tokenizer.model` (BPE, byte fallback, ChatML symbols) plus the
    tokenizer_config.json a Llama checkpoint ships with; no tokenizer.json."""
    import json

    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    text = folder / "corpus.txt"
    text.write_text("\n".join(corpus() * 3), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(folder / "tokenizer"), vocab_size=400,
                                   model_type="bpe", byte_fallback=True, bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
                                   user_defined_symbols=["<|im_start|>", "<|im_end|>"], minloglevel=2)
    text.unlink()
    (folder / "tokenizer.vocab").unlink()
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
              "add_bos_token": True, "chat_template": CHAT_TEMPLATE}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
