"""Superposed decoding and the n-gram store: k = 1 with no n-grams is greedy decoding on both
runtimes; input embeddings equal token ids; store probabilities equal counts; scores recompute."""

from __future__ import annotations

import collections
import hashlib
import json
import math
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

import edgegen
from conftest import RUNTIMES
from edgegen.cli import main
from edgegen.core.errors import CapabilityError
from edgegen.core.protocols import Feed
from edgegen.decoding import ngram
from edgegen.decoding.superposed import PENALTY, ngram_mixture
from edgegen.models import BUNDLED
from test_cli_errors import assert_one_line_error, run

PROMPT = "The number 12 follows 11 and comes before 13. The number"


@pytest.mark.parametrize("quant", ["none", "q4"])
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_embeddings_fed_as_inputs_equal_token_ids(converted, runtime, quant):
    backend = edgegen.load(converted("qwen2", runtime, quant)).backend
    ids = [5, 17, 42, 99, 3]
    by_ids = backend.forward(Feed(ids), backend.new_cache())
    by_embeds = backend.forward(Feed(embeddings=backend.embed(ids)), backend.new_cache())
    mixed = backend.forward(Feed(ids[:2], embeddings=backend.embed(ids[2:])), backend.new_cache())
    np.testing.assert_allclose(by_embeds, by_ids, atol=1e-5, rtol=0)
    np.testing.assert_allclose(mixed, by_ids, atol=1e-5, rtol=0)


@pytest.mark.parametrize("quant", ["none", "q4"])
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_one_draft_without_ngrams_is_greedy_decoding(converted, runtime, quant):
    model = edgegen.load(converted("qwen2", runtime, quant))
    greedy = model.generate(PROMPT, max_tokens=14, ignore_eos=True).token_ids
    completion = model.complete(PROMPT, drafts=1, ngram="none", max_tokens=14, ignore_eos=True)
    assert completion.drafts[0].token_ids == greedy


def small_sequences() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 7, size=n) for n in (40, 3, 25, 1, 60)]


def test_store_probabilities_equal_counts(tmp_path):
    seqs = small_sequences()
    ngram.build(seqs, tmp_path, vocab_size=7, tokenizer_fingerprint="t", sources=["x"], top=100,
                min_count={n: 1 for n in ngram.ORDERS})
    store = ngram.NgramStore(tmp_path)
    for n in ngram.ORDERS:
        counts = collections.Counter(tuple(s[i:i + n]) for s in seqs for i in range(len(s) - n + 1))
        totals = collections.Counter()
        for key, c in counts.items():
            totals[key[:-1]] += c
        for context in set(k[:-1] for k in counts):
            got = store.probs(list(context), np.arange(7), n)
            expected = [counts.get(context + (x,), 0) / totals[context] for x in range(7)]
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
        assert store.probs([9, 9, 9, 9, 9][: n - 1], np.arange(7), n).sum() == 0  # unseen context


def test_pruned_store_keeps_full_totals(tmp_path):
    seqs = small_sequences()
    ngram.build(seqs, tmp_path, vocab_size=7, tokenizer_fingerprint="t", sources=["x"], top=1,
                min_count={n: 1 for n in ngram.ORDERS})
    probs = ngram.NgramStore(tmp_path).probs([3], np.arange(7), 2)
    assert (probs > 0).sum() == 1 and probs.sum() < 1  # the kept successor's share of the full count


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_cli_build_is_deterministic_and_safe(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("The json module encodes Python objects. The json module decodes them again.\n" * 20)
    for name in ("a", "b"):
        result = CliRunner().invoke(main, ["ngram", "build", "--text", str(text), "-o", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    again = CliRunner().invoke(main, ["ngram", "build", "--text", str(text), "-o", str(tmp_path / "a"), "--force"])
    assert again.exit_code == 0 and digest(tmp_path / "a") == digest(tmp_path / "b")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    refused = CliRunner().invoke(main, ["ngram", "build", "--text", str(text), "-o", str(tmp_path / "mine"), "--force"])
    assert refused.exit_code == 2 and (tmp_path / "mine" / "notes.txt").read_text() == "keep"


@pytest.mark.parametrize("damage", ["meta", "array", "missing"])
def test_a_corrupt_store_is_one_line(tmp_path, damage):
    store = tmp_path / "store"
    shutil.copytree(BUNDLED / "tiny-chat" / "ngram", store)
    if damage == "meta":
        (store / "edgegen.json").write_text("{not json")
    elif damage == "array":
        path = store / "order3.next.npy"
        path.write_bytes(path.read_bytes()[:40])
    else:
        (store / "order4.counts.npy").unlink()
    assert_one_line_error(run("complete", "tiny-chat", "-p", "The json", "-m", "2", "--ngram", str(store)), "store")


def test_a_store_of_another_tokenizer_is_one_line(converted):
    result = run("complete", str(converted("qwen2", "onnx")), "-p", "The", "-m", "2",
                 "--ngram", str(BUNDLED / "tiny-chat" / "ngram"))
    assert_one_line_error(result, "another tokenizer")


def test_drafts_are_distinct_and_their_scores_recompute(tmp_path):
    model = edgegen.load("tiny-chat", runtime="onnx")
    result = model.complete("The json module", drafts=3, max_tokens=10)
    store = ngram.NgramStore(BUNDLED / "tiny-chat" / "ngram")
    assert result.ngram_store and len(result.drafts) == 3
    assert len({(tuple(d.token_ids), d.finished) for d in result.drafts}) == 3
    prompt = model.tokenizer.encode("The json module")
    alpha = result.trace.alpha
    for d in result.drafts:
        steps = d.token_ids + ([model.tokenizer.eos_token_ids[0]] if d.finished else [])
        score = 0.0
        for t, token in enumerate(steps):
            context = prompt + d.token_ids[:t]
            mix = ngram_mixture(store, context, np.array([token]))[0]
            known = alpha * math.log(mix) if mix > 0 else -PENALTY  # unknown to the store: penalised
            score += (1 - alpha) * result.trace.llm_logprobs[t][token] + known
        assert score == pytest.approx(d.score, abs=1e-9)


def test_complete_json(converted):
    result = CliRunner().invoke(main, ["complete", str(converted("qwen2", "onnx")), "-p", "The number", "-k", "2",
                                       "-m", "4", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert len(payload["drafts"]) == 2 and {"text", "token_ids", "score"} <= set(payload["drafts"][0])
    assert payload["timing"]["strategy"] == "superposed" and payload["timing"]["seconds_per_draft"] > 0


def test_superposed_needs_embeddings():
    from edgegen.decoding.autoregressive import Session
    from edgegen.decoding.superposed import Superposed, SuperposedSettings
    from fakes import FakeModel

    with pytest.raises(CapabilityError, match="embeddings"):
        Superposed(Session(FakeModel()), SuperposedSettings(drafts=2), None)


def test_one_draft_with_the_store_at_weight_zero_is_greedy_decoding():
    model = edgegen.load("tiny-chat", runtime="onnx")
    greedy = model.generate("The json module", max_tokens=12, ignore_eos=True).token_ids
    completion = model.complete("The json module", drafts=1, ngram_weight=0.0, max_tokens=12, ignore_eos=True)
    assert completion.ngram_store and completion.drafts[0].token_ids == greedy


def test_streamed_drafts_grow_step_by_step_into_the_result():
    model = edgegen.load("tiny-chat", runtime="onnx")
    steps = list(model.stream_complete("The json module", drafts=3, max_tokens=6, ignore_eos=True))
    assert len(steps) == 6 and all(len(step.drafts) == 3 for step in steps)  # k drafts from the first step
    lengths = [max(len(d.token_ids) for d in step.drafts) for step in steps]
    assert lengths == sorted(lengths) and lengths[-1] == 6
    final = model.complete("The json module", drafts=3, max_tokens=6, ignore_eos=True)
    assert [d.token_ids for d in steps[-1].drafts] == [d.token_ids for d in final.drafts]


def test_complete_with_no_model_uses_tiny_chat_and_its_store():
    result = CliRunner().invoke(main, ["complete", "-p", "The json module", "-k", "2", "-m", "3", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert len(payload["drafts"]) == 2
    assert "tiny-chat" in payload["timing"]["ngram_store"]
    streamed = CliRunner().invoke(main, ["complete", "-p", "The json module", "-k", "2", "-m", "3", "--stream"])
    assert streamed.exit_code == 0 and streamed.stderr.count(" | ") >= 3


def test_the_bundled_store_is_small():
    size = sum(f.stat().st_size for f in (BUNDLED / "tiny-chat" / "ngram").rglob("*") if f.is_file())
    assert size <= 10 * 2**20
