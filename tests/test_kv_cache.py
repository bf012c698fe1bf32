"""Quantized KV caches (int8 / int4, and fp16) on both runtimes: round-trip error bounds, attention
within tolerance of the float cache, exact rollback, and perplexity through the cache on the trained
tiny-chat.

Stated bounds (measured values in the comments):
- MLX mx.quantize round trip: |x − x̂| ≤ 1.1·s + 1e-3·|x| per value, s = (max − min) / (2^bits − 1)
  of its group: MLX snaps each group's bias so that zero is exact, which can shift the grid by up to
  half a step (measured max 1.04·s), and fp16 scales and biases add the relative term.
- ONNX GroupQueryAttention int8/int4: |x − x̂| ≤ scale/2 + 1e-6 for every value inside the
  calibrated range (scale = margin × absmax / qmax per channel); values beyond it are clipped.
- Attention over a quantized cache (MLX op, K, V ~ 0.1·N(0,1), 300 keys): 8-bit allclose at 1e-2
  (mlx-lm's tolerance); 4-bit cosine ≥ 0.99 per output row.
- tiny-chat perplexity over 600 held-out tokens fed one at a time: 8-bit within 0.5% of the float
  cache, 4-bit within 2% (measured on the copying tiny-chat: ONNX −0.01% / +0.19%, MLX −0.04% / +0.71%).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import edgegen
from conftest import RUNTIMES
from edgegen.cli import main
from edgegen.core.options import GenerateOptions
from edgegen.core.protocols import Feed, KVSpec
from edgegen.decoding.perplexity import perplexity
from edgegen.models import BUNDLED

BITS = (16, 8, 4)


@pytest.mark.parametrize("group_size", [32, 64])
@pytest.mark.parametrize("bits", [8, 4])
def test_mlx_round_trip_error_is_bounded(bits, group_size):
    import mlx.core as mx

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 64, 128)).astype(np.float32)
    x[..., 7] *= 20  # an outlier channel
    packed = mx.quantize(mx.array(x).astype(mx.float16), group_size=group_size, bits=bits)
    back = np.array(mx.dequantize(*packed, group_size=group_size, bits=bits).astype(mx.float32))
    groups = x.reshape(*x.shape[:-1], -1, group_size)
    step = (groups.max(-1, keepdims=True) - groups.min(-1, keepdims=True)) / (2**bits - 1)
    bound = np.broadcast_to(1.1 * step, groups.shape).reshape(x.shape) + 1e-3 * np.abs(x) + 1e-3
    assert (np.abs(back - x) <= bound).all()


@pytest.mark.parametrize("bits", [8, 4])
def test_mlx_attention_over_a_quantized_cache_stays_close(bits):
    import mlx.core as mx

    from edgegen.runtimes.mlx.cache import MLXKVCache, QuantizedMLXKVCache

    rng = np.random.default_rng(1)
    q, k, v = (mx.array(0.1 * rng.normal(size=shape).astype(np.float32)) for shape in
               [(1, 4, 300, 64), (1, 2, 300, 64), (1, 2, 300, 64)])
    outs = []
    for cache in (MLXKVCache(1, 1024), QuantizedMLXKVCache(1, 1024, KVSpec(bits=bits, group_size=32))):
        cache.attend(0, q[:, :, :297], k[:, :, :297], v[:, :, :297], 0.125, "causal")  # 297 stored keys
        cache.advance(297)
        outs.append(cache.attend(0, q[:, :, 297:], k[:, :, 297:], v[:, :, 297:], 0.125, "causal"))
    exact, approx = outs
    exact, approx = np.array(exact), np.array(approx)
    if bits == 8:
        np.testing.assert_allclose(approx, exact, rtol=1e-2, atol=1e-2)
    cos = (approx * exact).sum(-1) / (np.linalg.norm(approx, axis=-1) * np.linalg.norm(exact, axis=-1))
    assert cos.min() >= 0.99


@pytest.mark.parametrize("bits", [8, 4])
def test_onnx_cache_holds_each_value_within_half_a_step(converted, bits):
    """Layer 0's keys and values are projections of the same embeddings in both runs (later layers
    read attention over the quantized cache, so their inputs differ): compare those."""
    backend = edgegen.load(converted("qwen2", "onnx")).backend
    ids = [int(i) for i in np.random.default_rng(2).integers(3, 380, size=40)]
    float_cache, quant_cache = backend.new_cache(), backend.new_cache(KVSpec(bits=bits))
    backend.forward(Feed(ids), float_cache)
    backend.forward(Feed(ids), quant_cache)
    for kind, exact, stored in zip(("key", "value"), float_cache.buffers[0], quant_cache.buffers[0]):
        scale = quant_cache.scales[f"kv_scale.0.{kind}"]  # (1, Hkv, 1, Dh)
        values, exact = _unpack(stored[:, :, :40], bits), exact[:, :, :40]
        inside = np.abs(exact) <= scale * (127 if bits == 8 else 7)
        assert (np.abs(values * scale - exact) <= scale / 2 + 1e-6)[inside].all()
        assert inside.mean() > 0.9  # the calibration (another text) covers nearly every value


def _unpack(stored: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return stored.astype(np.float32)
    pairs = np.stack([stored & 0x0F, stored >> 4], axis=-1).reshape(*stored.shape[:-1], -1)
    return pairs.astype(np.float32) - 8.0


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_append_truncate_reappend_is_bit_identical(converted, runtime, bits):
    backend = edgegen.load(converted("mistral", runtime)).backend
    rng = np.random.default_rng(3)
    a, b, c = ([int(i) for i in rng.integers(3, 380, size=n)] for n in (30, 7, 9))
    once = backend.new_cache(KVSpec(bits=bits))
    backend.forward(Feed(a), once)
    expected = backend.forward(Feed(c), once)
    rolled = backend.new_cache(KVSpec(bits=bits))
    backend.forward(Feed(a + b), rolled)
    rolled.truncate(len(a))
    again = backend.forward(Feed(c), rolled)
    assert np.array_equal(again, expected)
    more = backend.forward(Feed([5]), rolled)
    assert np.array_equal(more, backend.forward(Feed([5]), once))


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_logits_through_a_quantized_cache_stay_close(converted, runtime, bits):
    backend = edgegen.load(converted("qwen3", runtime)).backend
    ids = [int(i) for i in np.random.default_rng(4).integers(3, 380, size=48)]
    exact = backend.forward(Feed(ids), backend.new_cache())
    approx = backend.forward(Feed(ids), backend.new_cache(KVSpec(bits=bits)))
    rel = np.abs(approx - exact).max() / exact.std()
    assert rel < {8: 0.1, 4: 0.6}[bits]  # measured on this random model: 8-bit ≈ 0.06, 4-bit ≈ 0.3


@pytest.fixture(scope="module")
def tiny_chat(tmp_path_factory):
    cache = {}

    def get(runtime):
        if runtime not in cache:
            out = tmp_path_factory.mktemp("tc") / runtime
            result = CliRunner().invoke(main, ["convert", "tiny-chat", "-o", str(out), "--runtime", runtime])
            assert result.exit_code == 0, result.output
            cache[runtime] = edgegen.load(out)
        return cache[runtime]

    return get


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_tiny_chat_perplexity_through_quantized_caches(tiny_chat, runtime):
    model = tiny_chat(runtime)
    text = (BUNDLED.parent / "_data" / "heldout-eval.txt").read_text()
    ids = model.tokenizer.encode(text)[:601]
    base = perplexity(model.backend, ids)
    assert base.tokens == 600
    for bits, bound in ((8, 0.005), (4, 0.02)):
        value = perplexity(model.backend, ids, kv=KVSpec(bits=bits)).perplexity
        assert abs(value / base.perplexity - 1) <= bound, (bits, value, base.perplexity)


def test_kv_bits_auto_is_measured_once_and_remembered(converted, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(converted("qwen2", "onnx"), folder)
    model = edgegen.load(folder)
    first = model.generate("The number 3", max_tokens=4, kv_bits="auto", ignore_eos=True)
    record = json.loads((folder / "kv_auto.json").read_text())
    assert record["kv_bits"] in (4, 8, 16, None) and {"float", "4"} <= set(record["perplexity"])
    assert model.session.kv == (None if record["kv_bits"] is None else KVSpec(bits=record["kv_bits"]))
    again = edgegen.load(folder).generate("The number 3", max_tokens=4, kv_bits="auto", ignore_eos=True)
    assert again.token_ids == first.token_ids


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_speculation_runs_unchanged_on_a_quantized_cache(converted, runtime):
    model = edgegen.load(converted("qwen3", runtime))
    plain = model.generate("The number 9", max_tokens=16, ignore_eos=True, kv_bits=8).token_ids
    model.reset()
    spec = model.generate("The number 9", max_tokens=16, ignore_eos=True, kv_bits=8, draft="prompt-lookup",
                          num_draft=4)
    assert spec.token_ids == plain


def test_manifest_and_info_report_kv_bytes(converted):
    manifest = json.loads((converted("qwen2", "onnx") / "edgegen.json").read_text())
    table = manifest["kv"]["bytes_per_token"]
    assert table["float"] == 2 * 2 * 2 * 16 * 4 and table["4"] == table["float"] / 8  # layers·(K,V)·heads·Dh·fp32
    info = CliRunner().invoke(main, ["info", str(converted("qwen2", "mlx"))])
    assert "KV bytes per token" in info.stdout and "4-bit" in info.stdout


def test_perplexity_command_json(converted):
    result = CliRunner().invoke(main, ["perplexity", str(converted("qwen2", "onnx")), "--kv-bits", "8",
                                       "--max-tokens", "64", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) == {"perplexity", "stderr", "tokens", "kv_bits", "kv_bytes_per_token", "peak_memory_mb"}
    assert report["tokens"] == 63 and report["kv_bits"] == 8 and report["perplexity"] > 1
    assert isinstance(report["kv_bytes_per_token"], int)


def test_perplexity_input_edges(converted, tmp_path):
    model = str(converted("qwen2", "onnx"))
    zero = CliRunner().invoke(main, ["perplexity", model, "--context", "0", "--max-tokens", "8"])
    assert zero.exit_code == 2 and "--context must be at least 2" in zero.stderr
    plain, marked = tmp_path / "plain.txt", tmp_path / "bom.txt"
    plain.write_text("The number 12 follows 11.", encoding="utf-8")
    marked.write_text("The number 12 follows 11.", encoding="utf-8-sig")
    scores = [json.loads(CliRunner().invoke(main, ["perplexity", model, "--text", str(f), "--json"]).stdout)
              for f in (plain, marked)]
    assert scores[0] == {**scores[1], "peak_memory_mb": scores[0]["peak_memory_mb"]}  # the mark is not scored


def test_onnx_cache_grows_one_layer_at_a_time_and_keeps_its_contents():
    """Growing holds the old cache plus one layer's new buffers, never two whole caches (at 16k
    tokens of an fp32 cache that was 400 MB of peak memory), and keeps every stored value."""
    import tracemalloc

    from edgegen.runtimes.onnx.cache import CHUNK, OnnxKVCache

    layers = 8
    tracemalloc.start()  # before the old buffers exist, so that their release is counted
    try:
        cache = OnnxKVCache(layers, kv_heads=2, head_dim=64, max_length=4 * CHUNK)
        cache.reserve(CHUNK)
        for k, v in cache.buffers:
            k[:] = np.random.default_rng(0).normal(size=k.shape)
            v[:] = -k
        cache.advance(CHUNK)
        before = [(k.copy(), v.copy()) for k, v in cache.buffers]
        old_bytes = cache.nbytes
        tracemalloc.reset_peak()
        start = tracemalloc.get_traced_memory()[0]
        cache.reserve(CHUNK)  # to 2 * CHUNK: the new cache is twice the old
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    new_bytes = cache.nbytes
    assert new_bytes == 2 * old_bytes
    assert peak <= new_bytes - old_bytes + new_bytes / layers + 4096, (peak, old_bytes, new_bytes)
    for (k, v), (k0, v0) in zip(cache.buffers, before):
        np.testing.assert_array_equal(k[:, :, :CHUNK], k0[:, :, :CHUNK])
        np.testing.assert_array_equal(v[:, :, :CHUNK], v0[:, :, :CHUNK])


def test_onnx_step_feeds_bound_once_give_each_forward_its_own_inputs(converted):
    """The causal graph's small inputs and its logits are arrays bound once per binding and written
    in place (runtimes/onnx/feeds.py): every mix of feed lengths, kept rows and embeddings on one
    cache must give what fresh caches give, and a returned row must not change under later forwards."""
    from edgegen.core.protocols import Feed

    backend = edgegen.load(converted("qwen2", "onnx")).backend
    ids = [int(i) for i in np.random.default_rng(3).integers(3, 300, size=12)]
    whole = backend.forward(Feed(ids, rows=0), backend.new_cache())  # (12, vocab)
    cache = backend.new_cache()
    first = backend.forward(Feed(ids[:4], rows=0), cache)
    kept = first.copy()
    step = backend.forward(Feed(ids[4:5]), cache)[-1]
    mixed = backend.forward(Feed(ids[5:6], embeddings=backend.embed(ids[6:8]), rows=3), cache)
    tail = backend.forward(Feed(ids[8:12], rows=2), cache)
    again = backend.forward(Feed(ids[4:5]), backend.new_cache())  # another cache, same backend
    assert np.array_equal(first, kept)
    np.testing.assert_allclose(first, whole[:4], atol=1e-4)
    np.testing.assert_allclose(step, whole[4], atol=1e-4)
    np.testing.assert_allclose(mixed, whole[5:8], atol=1e-4)
    np.testing.assert_allclose(tail, whole[10:12], atol=1e-4)
    assert again.shape == (1, backend.vocab_size)
    # one-row forwards in a row (each writes the same bound array), across the growth to a new binding
    long = [int(i) for i in np.random.default_rng(4).integers(3, 300, size=300)]
    reference = backend.forward(Feed(long, rows=0), backend.new_cache())
    cache = backend.new_cache()
    backend.forward(Feed(long[:250]), cache)
    steps = [backend.forward(Feed([t]), cache) for t in long[250:]]  # past 256 cached tokens: regrown
    np.testing.assert_allclose(np.concatenate(steps), reference[250:], atol=1e-4)


def test_kv_bits_auto_chooses_among_the_precisions_the_runtime_keeps(converted):
    """MLX quantizes a KV cache only where head_dim divides by 32 (these checkpoints: 16): auto
    measured 4 and 8 bits, failed on the first, and the command ended; it skips them now."""
    model = edgegen.load(converted("qwen2", "mlx"))
    assert model.backend.config.head_dim % 32
    result = model.generate([5, 17, 42], max_tokens=3, kv_bits="auto")
    assert result.stats.generated_tokens == 3
    assert model.kv_spec(GenerateOptions.from_kwargs(kv_bits="auto")) in (None, KVSpec(bits=16))
