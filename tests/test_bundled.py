"""The trained models shipped inside the package: they convert to both runtimes, generate, match
transformers, and `edgegen generate`/`chat` with no model argument use tiny-chat offline."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForCausalLM, AutoTokenizer

import edgegen
from conftest import RUNTIMES
from edgegen.cli import main
from edgegen.models import BUNDLED, bundled_models
from edgegen.tokenizer import Tokenizer

NAMES = ("tiny-chat", "tiny-draft")  # the language models; tiny-var and tiny-chat-bd have their own tests
PROSE = "The json module can serialize Python objects to a string, and parse them back."


def test_bundled_models_ship_within_the_size_budget():
    assert set(NAMES) <= set(bundled_models())
    size = sum(f.stat().st_size for f in BUNDLED.rglob("*") if f.is_file())
    assert size <= 64 * 2**20


@pytest.fixture(scope="module")
def bundled_converted(tmp_path_factory):
    cache = {}

    def get(name: str, runtime: str):
        if (name, runtime) not in cache:
            out = tmp_path_factory.mktemp("bundled") / f"{name}-{runtime}"
            result = CliRunner().invoke(main, ["convert", name, "-o", str(out), "--runtime", runtime])
            assert result.exit_code == 0, result.output
            cache[name, runtime] = out
        return cache[name, runtime]

    return get


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("name", NAMES)
def test_fp32_logits_match_transformers_on_trained_weights(name, runtime, bundled_converted):
    ids = Tokenizer(BUNDLED / name).encode(PROSE)
    hf = AutoModelForCausalLM.from_pretrained(BUNDLED / name, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = hf(torch.tensor([ids])).logits[0].numpy()
    ours = edgegen.load(bundled_converted(name, runtime)).logits(ids)
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)


def test_tiny_chat_copies_when_asked_so_prompt_lookup_drafts_several_tokens(bundled_converted):
    """tiny-chat learnt to copy (examples/train_tiny_copy.py): asked to repeat a held-out paragraph
    it mostly copies it, and prompt lookup then commits at least two tokens per forward."""
    passage = ("Python 3.10 adds a new function to the standard library: inspect.get_annotations(). In Python "
               "versions 3.10 and newer, calling this function is the best practice for accessing the annotations "
               "dict of any object that supports annotations.")
    model = edgegen.load(bundled_converted("tiny-chat", "onnx"))
    messages = [{"role": "user", "content": f"Rewrite this passage without changing it:\n\n{passage}"}]
    plain = model.chat(messages, max_tokens=96)
    model.reset()
    lookup = model.chat(messages, max_tokens=96, draft="prompt-lookup", num_draft=4)  # fixed: `auto` follows timings
    assert lookup.token_ids == plain.token_ids  # lossless
    words = passage.split()
    assert sum(w in plain.text.split() for w in words) >= 0.8 * len(words), plain.text
    assert lookup.stats.tokens_per_forward >= 2.0, lookup.stats.tokens_per_forward


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_tiny_chat_replies_in_words(runtime, bundled_converted):
    model = edgegen.load(bundled_converted("tiny-chat", runtime))
    reply = model.chat([{"role": "user", "content": "What does json.dumps do?"}], max_tokens=24)
    assert reply.stats.generated_tokens > 0 and sum(ch.isalpha() for ch in reply.text) > 5


@pytest.mark.parametrize("strip_json", [False, True], ids=["tokenizer.json", "tokenizer.model only"])
def test_sentencepiece_tokenizer_round_trips_like_transformers(tmp_path, strip_json):
    folder = tmp_path / "tok"
    shutil.copytree(BUNDLED / "tiny-chat", folder, ignore=shutil.ignore_patterns("*.safetensors"))
    if strip_json:
        (folder / "tokenizer.json").unlink()
    ours, theirs = Tokenizer(folder), AutoTokenizer.from_pretrained(BUNDLED / "tiny-chat")
    messages = [{"role": "user", "content": "Explain list comprehensions."}]
    for text in (PROSE, "  two leading spaces, a tab\tand\n\nnew lines", "Ünïcödé — ☃ 🙂"):
        ids = ours.encode(text)
        assert ids == theirs.encode(text)
        assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True)
    assert ours.decode(ours.encode(PROSE)) == PROSE
    assert ours.encode_chat(messages) == theirs.apply_chat_template(messages, add_generation_prompt=True,
                                                                    tokenize=True, return_dict=False)


def test_generate_with_no_model_uses_tiny_chat_offline():
    result = CliRunner().invoke(main, ["generate", "-p", "What is a list?", "-m", "8"])
    assert result.exit_code == 0, result.output
    assert "tokens-per-sec" in result.stderr
    again = CliRunner().invoke(main, ["info"])  # converted once, found again in the cache
    assert again.exit_code == 0 and "llama" in again.stdout
    named = CliRunner().invoke(main, ["info", "tiny-chat"])  # a bundled name, as every other command takes
    assert named.exit_code == 0 and named.stdout == again.stdout
