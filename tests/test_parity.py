"""Every (architecture, runtime) against transformers on the same tiny random checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import edgegen
from conftest import ARCHS, RUNTIMES

PROMPT = [5, 17, 42, 99, 3, 250, 7, 64, 128, 11, 300, 21, 8, 77, 190, 33]


def _hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("arch", ARCHS)
def test_fp32_logits_match_transformers(arch, runtime, checkpoints, converted):
    _, hf = checkpoints(arch)
    ours = edgegen.load(converted(arch, runtime)).logits(PROMPT)
    assert ours.shape == (len(PROMPT), hf.config.vocab_size) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, _hf_logits(hf, PROMPT), atol=1e-4, rtol=0)


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("arch", ARCHS)
def test_cached_incremental_decoding_equals_one_forward(arch, runtime, converted):
    model = edgegen.load(converted(arch, runtime))
    full = model.logits(PROMPT)
    session = model.session
    pieces = [session.feed(PROMPT[:5], last_only=False)]
    pieces += [session.feed([t], last_only=False) for t in PROMPT[5:9]]
    pieces.append(session.feed(PROMPT[9:], last_only=False))
    np.testing.assert_allclose(np.concatenate(pieces), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_tokens_equal_transformers_generate(arch, runtime, checkpoints, converted):
    _, hf = checkpoints(arch)
    ours = edgegen.load(converted(arch, runtime)).generate(PROMPT, max_tokens=32, ignore_eos=True)
    with torch.no_grad():
        ref = hf.generate(torch.tensor([PROMPT]), max_new_tokens=32, min_new_tokens=32, do_sample=False)
    assert ours.token_ids == ref[0, len(PROMPT):].tolist()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_truncate_rolls_back_exactly(runtime, converted):
    """Rollback (what speculative decoding needs): truncate, then feed other tokens == fresh run."""
    model = edgegen.load(converted("qwen2", runtime))
    session = model.session
    session.feed(PROMPT, last_only=False)
    session.rewind(6)
    assert session.cache.length == 6
    after = session.feed([1, 2, 3], last_only=False)
    np.testing.assert_allclose(after, model.logits(PROMPT[:6] + [1, 2, 3])[6:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_cache_grows_across_chunks(runtime, converted):
    """Decoding past the cache's first allocation (256 tokens) keeps every earlier entry."""
    model = edgegen.load(converted("llama", runtime))
    ids = [int(i) for i in np.random.default_rng(0).integers(3, 380, size=300)]
    session = model.session
    pieces = [session.feed(ids[:250], last_only=False)]
    pieces += [session.feed([t], last_only=False) for t in ids[250:]]
    np.testing.assert_allclose(np.concatenate(pieces), model.logits(ids), atol=1e-4, rtol=0)
