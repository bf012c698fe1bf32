"""The bundled block-diffusion model tiny-chat-bd: an SDAR-layout folder that goes through the real
converter and decodes offline, in parallel, into words (ONNX only, a few dozen tokens: fast)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

import edgegen
from edgegen.cli import main
from edgegen.models import BUNDLED
from edgegen.tokenizer import Tokenizer

FOLDER = BUNDLED / "tiny-chat-bd"
QUESTION = [{"role": "user", "content": "What does json.dumps do?"}]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-chat-bd") / "onnx"
    result = CliRunner().invoke(main, ["convert", str(FOLDER), "-o", str(out), "--runtime", "onnx"])
    assert result.exit_code == 0, result.output
    return out


def test_the_folder_is_in_sdars_layout_with_a_mask_token():
    config = json.loads((FOLDER / "config.json").read_text())
    assert config["model_type"] == "sdar" and config["architectures"] == ["SDARForCausalLM"]
    tokenizer = Tokenizer(FOLDER)
    assert tokenizer.token_id("<|MASK|>") == config["mask_token_id"] == config["vocab_size"] - 1
    assert tokenizer.encode("<|MASK|>", add_special_tokens=False) == [config["mask_token_id"]]
    assert config["block_size"] in (4, 8, 16, 32)
    assert not (FOLDER / "tokenizer.model").exists()  # it could not hold the mask token
    assert tokenizer.eos_token_ids == Tokenizer(BUNDLED / "tiny-chat").eos_token_ids


def test_it_converts_as_a_block_causal_diffusion_llm(converted):
    model = edgegen.load(converted)
    assert model.manifest.family == "dllm"
    spec = model.manifest.diffusion
    assert spec["attention"] == "block" and not spec["shift"]
    assert spec["mask_token_id"] == json.loads((FOLDER / "config.json").read_text())["mask_token_id"]


@pytest.mark.parametrize("block_size", [4, 8, 32])
def test_it_replies_in_words_committing_several_tokens_per_forward(converted, block_size):
    model = edgegen.load(converted)
    reply = model.chat(QUESTION, max_tokens=32, block_size=block_size, threshold=0.5)  # (at 0.9 it is ~1.1)
    mask = model.manifest.diffusion["mask_token_id"]
    assert reply.stats.strategy == "block-diffusion"
    assert 0 < reply.stats.generated_tokens <= 32 and mask not in reply.token_ids
    assert sum(ch.isalpha() for ch in reply.text) > 10
    assert reply.stats.tokens_per_forward > 1.5


def test_edgegen_generate_runs_the_bundled_name_offline():
    result = CliRunner().invoke(main, ["generate", "tiny-chat-bd", "-p", "What is a generator?", "--max-tokens", "24",
                                       "--json"])
    assert result.exit_code == 0, result.output
    timing = json.loads(result.stdout)["timing"]
    assert timing["strategy"] == "block-diffusion" and timing["tokens_per_forward"] > 0.5


FLOOR = 2.0
FLOOR_PROMPTS = ("What does json.dumps do?", "Explain list comprehensions.", "What is a generator?",
                 "Tell me about the statistics module.", "What is reprlib?", "Explain ssl.")


def test_at_the_default_threshold_it_commits_several_tokens_per_forward(converted):
    """Issue 26's floor under the distilled model's parallelism at τ 0.9, block 8, over a fixed
    prompt set (the goal is 2.5; the model card gives the measured figures)."""
    model = edgegen.load(converted)
    tokens = forwards = 0
    for prompt in FLOOR_PROMPTS:
        model.reset()
        reply = model.chat([{"role": "user", "content": prompt}], max_tokens=64, block_size=8, threshold=0.9)
        tokens, forwards = tokens + reply.stats.generated_tokens, forwards + reply.stats.forwards
    assert tokens / forwards >= FLOOR, (tokens, forwards)


MOST_REPEATED = 2  # of the model card's 12 prompts, to which tiny-chat gives 12 distinct replies


@contextmanager
def _importing_from(folder: str):
    """The repository's `folder` (examples/, benchmarks/) on sys.path for a test's imports."""
    path = str(Path(__file__).resolve().parents[1] / folder)
    sys.path.insert(0, path)
    try:
        yield
    finally:
        sys.path.remove(path)


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="issue 26: the shipped weights give one canned reply to 6 of these 12 prompts; "
                          "strict, so that weights which pass must drop this mark")
def test_it_does_not_give_one_canned_reply_to_different_questions(converted):
    """Distinct questions get distinct replies at the default settings. Self-distillation can teach
    the model a canned reply that tiny-chat finds fluent whatever was asked: the perplexity proxy
    (and tokens per forward) then flatter it, so this is checked on its own (issue 26)."""
    with _importing_from("benchmarks"):
        from _dllm_quality import PROMPTS  # the model card's prompts
    model = edgegen.load(converted)
    replies = Counter()
    for prompt in PROMPTS:
        model.reset()
        reply = model.chat([{"role": "user", "content": prompt}], max_tokens=64, block_size=8, threshold=0.9)
        replies[reply.text] += 1
    text, count = replies.most_common(1)[0]
    assert count <= MOST_REPEATED, (count, text)


def test_self_distillation_keeps_own_replies_that_pass_and_drops_canned_ones():
    """tiny_bd_self_distill.choose: a reply of the model's own replaces tiny-chat's where it is at most
    max_ratio× as perplex; one it gives to more questions than max_repeats and than tiny-chat gives
    it to is a collapse onto a canned reply, and tiny-chat's reply is kept instead."""
    pytest.importorskip("transformers")
    with _importing_from("examples"):
        from tiny_bd_self_distill import ASSISTANT, END, choose
    canned = "The following functions are used."
    answers = [{"head": f"q{i} ", "teacher": f"t{i}", "own": canned, "gap": 0.0} for i in range(4)]
    answers += [{"head": "q4 ", "teacher": "t4", "own": "o4", "gap": 0.0},  # passes
                {"head": "q5 ", "teacher": "t5", "own": "o5", "gap": 1.0},  # too perplex
                {"head": "q6 ", "teacher": "t6", "own": None, "gap": None},  # did not end
                {"head": "q7 ", "teacher": "Same.", "own": "Same.", "gap": 0.0},  # tiny-chat's own canned reply,
                {"head": "q8 ", "teacher": "Same.", "own": "Same.", "gap": 0.0}]  # as often as tiny-chat gives it
    records, own, repeated = choose(answers, max_ratio=1.1, max_repeats=3)
    replies = [r["text"].removeprefix(a["head"] + ASSISTANT).removesuffix(END + "\n") for r, a in zip(records, answers)]
    assert replies == ["t0", "t1", "t2", "t3", "o4", "t5", "t6", "Same.", "Same."]
    assert (own, repeated) == (3, 4)
    records, own, repeated = choose(answers, max_ratio=1.1, max_repeats=0)  # no limit: rounds 1-4
    assert (own, repeated) == (7, 0)


def test_the_training_probe_decodes_as_edgegen_does(converted):
    """examples/tiny_bd_probe.py decodes in torch, without a cache, while tiny-chat-bd trains; the
    figures it steers training by are edgegen's only if it commits the same tokens in the same
    number of forwards as edgegen's block-diffusion engine (cached, ONNX)."""
    pytest.importorskip("transformers")
    with _importing_from("examples"):
        import tiny_bd_probe
        from train_tiny_bd import load_sdar
        from transformers import AutoTokenizer
    torch_model, tokenizer = load_sdar(FOLDER), AutoTokenizer.from_pretrained(FOLDER)
    stops = tiny_bd_probe.stop_ids(tokenizer)
    model = edgegen.load(converted)
    for prompt in FLOOR_PROMPTS[:4]:
        ids = tiny_bd_probe.prompt_ids(tokenizer, prompt)
        assert ids == model.tokenizer.encode_chat([{"role": "user", "content": prompt}])
        model.reset()
        reply = model.generate(ids, max_tokens=64, block_size=8, threshold=0.9)
        tokens, forwards = tiny_bd_probe.decode(torch_model, ids, tokenizer.mask_token_id, stops, block=8, tau=0.9)
        assert (tokens, forwards) == (reply.token_ids, reply.stats.forwards), prompt
