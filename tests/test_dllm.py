"""Diffusion LLMs: every architecture's converted forward equals a reference under its 4-D mask, on
both runtimes; block-diffusion decoding with the cache gives the tokens of decoding without it,
for every commit rule, block size and prompt length; and the guards that keep those tests honest."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import edgegen
from conftest import RUNTIMES
from dllm_checkpoints import BLOCK, DLLMS, MASK_ID, block_mask, build
from edgegen.cli import main
from edgegen.core.protocols import Feed
from edgegen.decoding.commit_rules import RULES

IDS = [5, 17, 42, 99, 3, 250, 7, 64, 128, 11, 300, 21, 8, 77, 190, 33, 2, 9]


@pytest.fixture(scope="session")
def dllm(tmp_path_factory):
    """name -> (source folder, reference forward); name, runtime -> converted folder."""
    sources, converted = {}, {}

    def source(name):
        if name not in sources:
            folder = tmp_path_factory.mktemp(f"hf-{name}")
            sources[name] = (folder, build(name, folder))
        return sources[name]

    def convert(name, runtime):
        if (name, runtime) not in converted:
            out = tmp_path_factory.mktemp("dllm") / f"{name}-{runtime}"
            result = CliRunner().invoke(main, ["convert", str(source(name)[0]), "-o", str(out), "--runtime", runtime])
            assert result.exit_code == 0, result.output
            converted[name, runtime] = out
        return converted[name, runtime]

    return source, convert


def mask_of(name: str, n: int) -> tuple[list[int], np.ndarray]:
    if DLLMS[name][2] == "block":
        return [i // BLOCK for i in range(n)], block_mask(n, BLOCK)
    return [0] * n, np.ones((n, n), dtype=bool)


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("name", list(DLLMS))
def test_logits_match_the_reference_under_the_models_mask(name, runtime, dllm):
    source, convert = dllm
    reference = source(name)[1]
    blocks, allowed = mask_of(name, len(IDS))
    backend = edgegen.load(convert(name, runtime)).backend
    ours = backend.forward(Feed(IDS, blocks=blocks, commit=False), backend.new_cache())
    np.testing.assert_allclose(ours, reference(IDS, allowed), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["sdar", "bd3lm"])
def test_a_wrong_mask_would_be_caught(name, dllm):
    """The guard: with these weights a causal mask instead of the block mask moves the logits far
    beyond the parity tolerance, so a mask bug cannot pass the test above."""
    reference = dllm[0](name)[1]
    _, allowed = mask_of(name, len(IDS))
    causal = np.tril(np.ones((len(IDS), len(IDS)), dtype=bool))
    assert np.abs(reference(IDS, allowed) - reference(IDS, causal)).max() > 0.05


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_block_scored_over_the_cache_equals_the_full_forward(runtime, dllm):
    backend = edgegen.load(dllm[1]("sdar", runtime)).backend
    blocks, _ = mask_of("sdar", 16)
    full = backend.forward(Feed(IDS[:16], blocks=blocks, commit=False), backend.new_cache())
    cache = backend.new_cache()
    backend.forward(Feed(IDS[:12], blocks=blocks[:12]), cache)  # three committed blocks
    block = backend.forward(Feed(IDS[12:16], blocks=[0] * 4, commit=False), cache)
    assert cache.length == 12
    np.testing.assert_allclose(block, full[12:16], atol=1e-5, rtol=0)


def test_the_manifest_records_the_resolved_spec(dllm):
    manifest = json.loads((dllm[1]("fast_dllm_qwen", "onnx") / "edgegen.json").read_text())
    assert manifest["family"] == "dllm"
    assert manifest["diffusion"]["mask_token_id"] == 384  # |<MASK>| found in the tokenizer
    assert manifest["diffusion"]["shift"] and manifest["diffusion"]["block_size"] == BLOCK
    info = CliRunner().invoke(main, ["info", str(dllm[1]("dream", "onnx"))])
    assert "diffusion LLM" in info.stdout and "bidirectional" in info.stdout


# ------------------------------------------------------------------ decoding

PROMPTS = {"shorter": IDS[:3], "equal": IDS[:4], "longer": IDS[:10]}


def run(model, prompt, **options):
    model.reset()
    options = {"max_tokens": 10, "ignore_eos": True, **options}
    return model.generate(prompt, **options)


@pytest.mark.parametrize("block_size", [1, 4, 32])
@pytest.mark.parametrize("name", ["sdar", "fast_dllm_qwen"])
def test_cached_equals_uncached_for_every_rule(name, block_size, dllm):
    model = edgegen.load(dllm[1](name, "onnx"))
    for rule in RULES:
        for kind, prompt in PROMPTS.items():
            options = dict(rule=rule, block_size=block_size, seed=3)
            cached = run(model, prompt, **options)
            uncached = run(model, prompt, dllm_cache="none", **options)
            assert cached.token_ids == uncached.token_ids, (rule, kind)
            assert MASK_ID not in cached.token_ids or name != "sdar"


@pytest.mark.parametrize("name", ["sdar", "fast_dllm_qwen", "bd3lm"])
def test_cached_equals_uncached_on_mlx(name, dllm):
    model = edgegen.load(dllm[1](name, "mlx"))
    for rule in ("threshold", "dynamic", "first_hitting"):
        cached = run(model, PROMPTS["longer"], rule=rule, seed=1, max_tokens=8)
        assert cached.token_ids == run(model, PROMPTS["longer"], rule=rule, seed=1, max_tokens=8,
                                       dllm_cache="none").token_ids


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_both_runtimes_decode_the_same_tokens(runtime, dllm):
    onnx = run(edgegen.load(dllm[1]("sdar", "onnx")), PROMPTS["longer"], rule="threshold", threshold=0.5)
    other = run(edgegen.load(dllm[1]("sdar", runtime)), PROMPTS["longer"], rule="threshold", threshold=0.5)
    assert other.token_ids == onnx.token_ids


def test_block_size_one_is_greedy_autoregressive_decoding(dllm, tmp_path):
    """Fast-dLLM v2 reads position p from row p − 1; with blocks of one token and one token per
    forward each block is one autoregressive step on the same weights."""
    source = dllm[0]("fast_dllm_qwen")[0]
    config = json.loads((source / "config.json").read_text())
    as_ar = tmp_path / "ar-src"
    import shutil

    shutil.copytree(source, as_ar)
    (as_ar / "config.json").write_text(json.dumps({**config, "model_type": "qwen2"}))
    assert CliRunner().invoke(main, ["convert", str(as_ar), "-o", str(tmp_path / "ar")]).exit_code == 0
    expected = edgegen.load(tmp_path / "ar").generate(IDS[:6], max_tokens=12, ignore_eos=True).token_ids
    model = edgegen.load(dllm[1]("fast_dllm_qwen", "onnx"))
    got = run(model, IDS[:6], max_tokens=12, block_size=1, rule="fixed", steps=1)
    assert got.token_ids == expected


@pytest.mark.parametrize("cache", ["dual", "prefix", "none"])
@pytest.mark.parametrize("name", ["llada", "dream"])
def test_bidirectional_models_decode_with_each_cache(name, cache, dllm):
    model = edgegen.load(dllm[1](name, "onnx"))
    result = run(model, PROMPTS["longer"], dllm_cache=cache, block_size=4, max_tokens=8)
    assert len(result.token_ids) == 8 and result.stats.tokens_per_forward >= 1
    if cache != "none":  # refreshed before every forward, an approximate cache is exact
        exact = run(model, PROMPTS["longer"], dllm_cache="none", block_size=4, max_tokens=8)
        assert run(model, PROMPTS["longer"], dllm_cache=cache, block_size=4, max_tokens=8,
                   refresh_every=1).token_ids == exact.token_ids


def test_generation_stops_at_eos_with_no_mask_before_it(dllm):
    model = edgegen.load(dllm[1]("sdar", "onnx"))
    tokens = run(model, PROMPTS["longer"], max_tokens=12).token_ids
    eos = tokens[5]
    model.tokenizer.eos_token_ids = (eos,)
    stopped = run(model, PROMPTS["longer"], max_tokens=12, ignore_eos=False)
    assert stopped.token_ids == tokens[: tokens.index(eos)] and stopped.stats.finish_reason == "stop"


def test_stats_count_tokens_per_forward(dllm):
    model = edgegen.load(dllm[1]("sdar", "onnx"))
    result = run(model, PROMPTS["longer"], rule="threshold", threshold=0.0, max_tokens=16)
    assert result.stats.strategy == "block-diffusion"
    assert result.stats.tokens_per_forward > 1.5  # threshold 0 commits whole blocks


def test_generate_json_reports_forwards(dllm):
    out = CliRunner().invoke(main, ["generate", str(dllm[1]("sdar", "onnx")), "-p", "The number", "--raw",
                                    "-m", "8", "--rule", "threshold", "--threshold", "0.5", "--block-size", "4",
                                    "--json"])
    assert out.exit_code == 0, out.output
    timing = json.loads(out.stdout)["timing"]
    assert timing["strategy"] == "block-diffusion" and timing["forwards"] >= 1 and timing["tokens_per_forward"] > 0


def test_dllm_options_are_checked(dllm):
    out = CliRunner().invoke(main, ["generate", str(dllm[1]("sdar", "onnx")), "-p", "x", "--dllm-cache", "dual"])
    assert out.exit_code == 2 and "block-causal" in out.stderr
    out = CliRunner().invoke(main, ["generate", str(dllm[1]("sdar", "onnx")), "-p", "x", "--draft", "q4"])
    assert out.exit_code == 2 and "diffusion" in out.stderr
    out = CliRunner().invoke(main, ["generate", str(dllm[1]("sdar", "onnx")), "-p", "x", "--num-draft", "4"])
    assert out.exit_code == 2 and "speculative" in out.stderr  # not silently ignored


def test_diffusion_options_on_an_autoregressive_model_are_refused(converted):
    out = CliRunner().invoke(main, ["generate", str(converted("qwen2", "onnx")), "-p", "x", "--block-size", "4"])
    assert out.exit_code == 2 and "apply to diffusion LLMs" in out.stderr


def test_a_growing_prompt_reuses_its_committed_blocks(dllm):
    model = edgegen.load(dllm[1]("sdar", "onnx"))
    model.reset()
    model.generate(IDS[:10], max_tokens=6, ignore_eos=True)
    again = model.generate(IDS[:15], max_tokens=6, ignore_eos=True)  # blocks [0, 8) are still in the cache
    assert again.stats.prompt_tokens == 15 - 8  # the partial block [12, 15) runs with the first denoising step
    fresh = run(model, IDS[:15], max_tokens=6)
    assert fresh.stats.prompt_tokens == 15
    assert again.token_ids == fresh.token_ids
