"""Nonsense numbers in a checkpoint's config.json (a negative layer count, a context of 1e30, heads
that do not group) are one clear line naming the field, exit code 2, nothing written, and no
allocation sized from them; the configs of released models still parse."""

from __future__ import annotations

import contextlib
import json
import resource
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgegen.archs import arch_module
from edgegen.archs._checks import MAX_LAYERS
from edgegen.cli import main
from edgegen.core.errors import ConfigError
from edgegen.models import BUNDLED


def convert(src: Path, out: Path):
    with _memory_cap(2 * 2**30):  # were a size not checked, this fails the test rather than the machine
        return CliRunner().invoke(main, ["convert", str(src), "-o", str(out), "--runtime", "onnx"])


@contextlib.contextmanager
def _memory_cap(headroom: int):
    """Address space limited to what the process uses now plus `headroom` (Linux; elsewhere no cap)."""
    statm = Path("/proc/self/statm")
    if not statm.is_file():
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    used = int(statm.read_text().split()[0]) * resource.getpagesize()
    cap = used + headroom if hard == resource.RLIM_INFINITY else min(used + headroom, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def assert_refused(result, out: Path, *words: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("edgegen: error: config.json"), result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], lines[0]
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(("out", ".out"))) == []


def patched(src: Path, folder: Path, **fields) -> Path:
    """A copy of the checkpoint `src` whose config.json has `fields` replaced."""
    shutil.copytree(src, folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    (folder / "config.json").write_text(json.dumps({**config, **fields}), encoding="utf-8")
    return folder


# --------------------------------------------------------------------------- a bundled Llama, through the CLI
BAD_LLAMA = [  # (field, value, words the line must hold)
    ("num_hidden_layers", 1e30, ["no larger than 1024", "1e+30"]),  # grew memory without bound
    ("num_hidden_layers", 10**9, ["no larger than 1024"]),
    ("num_hidden_layers", -1, ["positive integer", "-1"]),  # RuntimeError traceback
    ("num_hidden_layers", 0, ["positive integer"]),  # wrote a model that generate crashed on
    ("num_hidden_layers", True, ["positive integer"]),
    ("num_hidden_layers", "4", ["positive integer"]),
    ("num_hidden_layers", 2.5, ["positive integer"]),
    ("max_position_embeddings", -1, ["positive integer"]),  # onnxruntime InvalidArgument traceback
    ("max_position_embeddings", 1e30, ["no larger than"]),  # ValueError traceback
    ("max_position_embeddings", 10**30, ["no larger than"]),
    ("max_position_embeddings", 0, ["positive integer"]),  # wrote a model that could never generate
    ("hidden_size", 0, ["positive integer"]),
    ("intermediate_size", -384, ["positive integer"]),
    ("vocab_size", 1e30, ["positive integer"]),
    ("num_attention_heads", -4, ["positive integer"]),
    ("num_key_value_heads", 0, ["positive integer"]),
    ("num_key_value_heads", 3, ["num_attention_heads (4)", "multiple of num_key_value_heads (3)"]),
    ("head_dim", 33, ["even"]),
    ("head_dim", -32, ["positive integer"]),
    ("rms_norm_eps", -1e-5, ["positive number"]),
    ("rope_parameters", {"rope_theta": 0, "rope_type": "default"}, ["rope_theta", "positive number"]),
    ("rope_parameters", {"rope_theta": 1e4, "rope_type": "linear", "factor": -2}, ["RoPE scaling factor",
                                                                                   "positive number"]),
    ("rope_parameters", {"rope_theta": 1e4, "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0,
                         "high_freq_factor": 1.0, "original_max_position_embeddings": 64}, ["high_freq_factor"]),
    ("rope_parameters", [10000.0], ["rope_parameters", "JSON object"]),
]


@pytest.mark.parametrize("field, value, words", BAD_LLAMA, ids=[f"{f}={v!r}"[:40] for f, v, _ in BAD_LLAMA])
def test_a_nonsense_number_is_one_line_and_nothing_is_written(tmp_path, field, value, words):
    src = patched(BUNDLED / "tiny-draft", tmp_path / "ckpt", **{field: value})
    out = tmp_path / "out"
    assert_refused(convert(src, out), out, *([field] if field != "rope_parameters" else []), *words)


def test_a_whole_float_reads_as_the_integer_it_is():
    hf = json.loads((BUNDLED / "tiny-draft" / "config.json").read_text(encoding="utf-8"))
    config = arch_module("llama").parse_config({**hf, "num_hidden_layers": 4.0, "max_position_embeddings": 1024.0})
    assert (config.num_hidden_layers, config.context_length) == (4, 1024)
    assert type(config.num_hidden_layers) is int


def test_the_bundled_block_diffusion_model_checks_its_own_fields(tmp_path):
    for i, (fields, words) in enumerate([({"block_size": 0}, ["block_size", "positive integer"]),
                                         ({"block_size": 4096}, ["block_size (4096)", "max_position_embeddings"]),
                                         ({"mask_token_id": -1}, ["mask_token_id", "non-negative"]),
                                         ({"mask_token_id": 8193}, ["mask_token_id (8193)", "vocab_size (8193)"])]):
        src = patched(BUNDLED / "tiny-chat-bd", tmp_path / f"ckpt{i}", **fields)
        out = tmp_path / f"case{i}" / "out"
        out.parent.mkdir()
        assert_refused(convert(src, out), out, *words)


def test_a_var_config_json_is_checked_before_the_weights_are_read(tmp_path):
    for i, (fields, words) in enumerate([({"num_heads": -4}, ["num_heads", "positive integer"]),
                                         ({"num_heads": True}, ["num_heads"]),
                                         ({"patch_nums": "1,2,3"}, ["patch_nums", "list of positive integers"]),
                                         ({"patch_nums": [1, 2, 0]}, ["patch_nums"])]):
        src = patched(BUNDLED / "tiny-var", tmp_path / f"ckpt{i}", **fields)
        out = tmp_path / f"case{i}" / "out"
        out.parent.mkdir()
        assert_refused(convert(src, out), out, *words)


# --------------------------------------------------------------------------- every architecture's own names
# Small valid configs in each checkpoint's own layout (the shapes of tests/checkpoints.py).
BASE = dict(vocab_size=384, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6)
CONFIGS = {
    "llama": {**BASE, "model_type": "llama"},
    "mistral": {**BASE, "model_type": "mistral", "head_dim": 32, "sliding_window": 400},
    "qwen2": {**BASE, "model_type": "qwen2"},
    "qwen3": {**BASE, "model_type": "qwen3", "head_dim": 32},
    "sdar": {**BASE, "model_type": "sdar", "head_dim": 16, "block_size": 4, "mask_token_id": 383},
    "fast_dllm_qwen": {**BASE, "model_type": "Fast_dLLM_Qwen", "bd_size": 4},
    "dream": {**BASE, "model_type": "Dream", "mask_token_id": 383},
    "llada": {"model_type": "llada", "d_model": 64, "n_heads": 4, "n_kv_heads": 4, "n_layers": 2, "mlp_hidden_size": 96,
              "vocab_size": 384, "embedding_size": 384, "max_sequence_length": 512, "mask_token_id": 383},
    "bd3lm": {"model_type": "bd3lm", "block_size": 4, "vocab_size": 384, "model_length": 256, "hidden_dim": 64,
              "n_blocks": 2, "n_heads": 4, "time_conditioning": False},
}
BAD = [  # (architecture, field, value, words)
    *[(arch, "num_hidden_layers", -1, ["num_hidden_layers"]) for arch in CONFIGS if arch not in ("llada", "bd3lm")],
    ("mistral", "sliding_window", -1, ["sliding_window", "positive integer"]),
    ("mistral", "sliding_window", "4096", ["sliding_window"]),
    ("qwen3", "head_dim", 0, ["head_dim"]),
    ("sdar", "block_size", "4", ["block_size"]),
    ("fast_dllm_qwen", "bd_size", 0, ["bd_size", "positive integer"]),
    ("fast_dllm_qwen", "bd_size", 1024, ["bd_size (1024)", "max_position_embeddings (512)"]),
    ("fast_dllm_qwen", "small_block_size", -8, ["small_block_size"]),
    ("dream", "mask_token_id", "x", ["mask_token_id"]),
    ("dream", "mask_token_id", 384, ["mask_token_id (384)", "vocab_size (384)"]),
    ("llada", "n_layers", 0, ["n_layers", "positive integer"]),
    ("llada", "n_layers", 1e30, ["n_layers", "no larger than 1024"]),
    ("llada", "d_model", "64", ["d_model"]),
    ("llada", "n_kv_heads", 3, ["n_heads (4)", "multiple of n_kv_heads (3)"]),
    ("llada", "max_sequence_length", -1, ["max_sequence_length"]),
    ("llada", "embedding_size", 1.5, ["embedding_size"]),
    ("llada", "mask_token_id", 384, ["mask_token_id (384)", "embedding_size (384)"]),
    ("bd3lm", "n_blocks", -1, ["n_blocks", "positive integer"]),
    ("bd3lm", "n_blocks", MAX_LAYERS + 1, ["n_blocks", "no larger than 1024"]),
    ("bd3lm", "hidden_dim", 0, ["hidden_dim"]),
    ("bd3lm", "model_length", 0, ["model_length"]),
    ("bd3lm", "block_size", 512, ["block_size (512)", "model_length (256)"]),
]


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_the_small_config_of_every_architecture_parses(arch):
    config = arch_module(CONFIGS[arch]["model_type"]).parse_config(CONFIGS[arch])
    assert config.num_hidden_layers == 2 and config.context_length > 0


@pytest.mark.parametrize("arch, field, value, words", BAD, ids=[f"{a}-{f}={v!r}" for a, f, v, _ in BAD])
def test_every_architecture_names_its_own_field(tmp_path, arch, field, value, words):
    src = tmp_path / "ckpt"
    src.mkdir()  # config.json alone: the numbers are checked before anything else is read
    (src / "config.json").write_text(json.dumps({**CONFIGS[arch], field: value}), encoding="utf-8")
    out = tmp_path / "out"
    assert_refused(convert(src, out), out, *words)


# --------------------------------------------------------------------------- released models still parse
# The fields that matter of released configs: head_dim independent of hidden_size (Qwen3, Mistral
# Nemo), million-token contexts, llama3 RoPE scaling, each diffusion family's own names.
RELEASED = {
    "Llama-3.1-8B": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                     "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
                     "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 8192, "rope_type": "llama3"}},
    "Qwen3-0.6B": {"model_type": "qwen3", "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
                   "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
                   "max_position_embeddings": 40960, "rope_theta": 1000000, "sliding_window": None},
    "Qwen2.5-7B-Instruct-1M": {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944,
                               "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
                               "vocab_size": 152064, "max_position_embeddings": 1010000, "rope_theta": 10000000.0},
    "Mistral-7B-v0.1": {"model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336,
                        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                        "vocab_size": 32000, "max_position_embeddings": 32768, "sliding_window": 4096},
    "Mistral-Nemo": {"model_type": "mistral", "hidden_size": 5120, "intermediate_size": 14336, "num_hidden_layers": 40,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 131072,
                     "max_position_embeddings": 1024000, "sliding_window": None, "rope_theta": 1000000.0},
    "SDAR-1.7B-Chat": {"model_type": "sdar", "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28,
                       "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
                       "max_position_embeddings": 32768, "block_size": 4, "mask_token_id": 151669},
    "Dream-v0-Instruct-7B": {"model_type": "Dream", "hidden_size": 3584, "intermediate_size": 18944,
                             "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
                             "vocab_size": 152064, "max_position_embeddings": 131072, "mask_token_id": 151666},
    "Fast_dLLM_v2_1.5B": {"model_type": "Fast_dLLM_Qwen", "hidden_size": 1536, "intermediate_size": 8960,
                          "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
                          "vocab_size": 151936, "max_position_embeddings": 32768, "bd_size": 32},
    "LLaDA-8B-Instruct": {"model_type": "llada", "d_model": 4096, "n_heads": 32, "n_kv_heads": 32, "n_layers": 32,
                          "mlp_hidden_size": 12288, "mlp_ratio": 4, "vocab_size": 126464, "embedding_size": 126464,
                          "max_sequence_length": 4096, "rope_theta": 500000.0, "mask_token_id": 126336},
    "bd3lm-owt-block_size4": {"model_type": "bd3lm", "hidden_dim": 768, "n_heads": 12, "n_blocks": 12,
                              "vocab_size": 50258, "model_length": 1024, "block_size": 4, "cond_dim": 128,
                              "time_conditioning": False},
}


@pytest.mark.parametrize("name", list(RELEASED))
def test_released_model_configs_still_parse(name):
    hf = RELEASED[name]
    config = arch_module(hf["model_type"]).parse_config(hf)
    assert config.num_hidden_layers == hf.get("num_hidden_layers", hf.get("n_layers", hf.get("n_blocks")))


def test_a_manifest_with_a_nonsense_config_is_refused_when_loaded():
    """The runtimes parse the manifest's copy of config.json the same way."""
    hf = {**CONFIGS["llama"], "num_hidden_layers": 0}
    with pytest.raises(ConfigError, match="num_hidden_layers must be a positive integer, got 0"):
        arch_module("llama").parse_config(hf)


def test_a_text_true_or_false_is_refused_not_read_as_true(tmp_path):
    """tie_word_embeddings "false" was read with bool(): True."""
    from edgegen.archs._decoder import parse_decoder_config

    hf = {"model_type": "llama", "vocab_size": 8, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1,
          "num_attention_heads": 2}
    assert parse_decoder_config({**hf, "tie_word_embeddings": True}).tie_word_embeddings is True
    assert parse_decoder_config({**hf, "tie_word_embeddings": None}).tie_word_embeddings is False
    with pytest.raises(ConfigError, match="tie_word_embeddings must be true or false"):
        parse_decoder_config({**hf, "tie_word_embeddings": "false"})
