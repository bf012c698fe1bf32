"""ONNX decode steps run attention with each KV head's query heads as rows (grouped_decode.py):
the step must see exactly what the ordinary call sees, at every cache precision, and the runtime
must keep room for the key copies the step writes after the new token."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import edgegen
from edgegen.cli import main
from edgegen.core.protocols import Feed, KVSpec

BITS = [None, 16, 8, 4]
TOLERANCE = {None: 1e-4, 16: 1e-3, 8: 1e-3, 4: 1e-3}  # max |Δ logit| (fp32 summation order; fp16 K/V)


@pytest.fixture(scope="module")
def grouped(checkpoints, tmp_path_factory):
    """arch -> an ONNX conversion with the grouped step forced on (EDGEGEN_GROUPED_DECODE=1): the
    test configs' contexts are far too short for it to pay, so by default they are built without.
    "tiny-chat" has 6 query heads over 2 KV heads: groups of 3 (the tiny test configs have 2 over
    2, where a query head / row mix-up can cancel out)."""
    from click.testing import CliRunner

    built: dict[str, object] = {}

    def get(arch: str):
        if arch not in built:
            src = "tiny-chat" if arch == "tiny-chat" else str(checkpoints(arch)[0])
            out = tmp_path_factory.mktemp("grouped") / arch
            with pytest.MonkeyPatch.context() as env:
                env.setenv("EDGEGEN_GROUPED_DECODE", "1")
                result = CliRunner().invoke(main, ["convert", src, "-o", str(out), "--runtime", "onnx"])
            assert result.exit_code == 0, result.output
            built[arch] = out
        return built[arch]

    return get


def _ids(n: int, seed: int = 0) -> list[int]:
    return [int(i) for i in np.random.default_rng(seed).integers(3, 380, size=n)]


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "tiny-chat"])  # packed q/k/v; q/k norms; groups of 3
def test_decode_steps_match_one_forward(grouped, arch, bits):
    backend = edgegen.load(grouped(arch)).backend
    ids = _ids(24)
    spec = None if bits is None else KVSpec(bits=bits)
    whole = backend.forward(Feed(ids, rows=0), backend.new_cache(spec))  # (24, vocab), the ordinary call
    cache = backend.new_cache(spec)
    backend.forward(Feed(ids[:16]), cache)
    steps = np.stack([backend.forward(Feed([t]), cache)[-1] for t in ids[16:]])  # grouped decode steps
    assert np.abs(steps - whole[16:]).max() < TOLERANCE[bits]


def test_a_step_writes_its_key_once_per_query_head_of_a_group(grouped):
    """Observable proof that the grouped branch ran: the G - 1 rows after the new token hold its
    key copies (the ordinary call writes one row)."""
    backend = edgegen.load(grouped("qwen2")).backend
    group = backend.config.num_attention_heads // backend.config.num_key_value_heads
    assert group > 1
    cache = backend.new_cache()
    backend.forward(Feed(_ids(10)), cache)
    backend.forward(Feed([7]), cache)
    key = cache.buffers[0][0][0]  # (Hkv, capacity, Dh)
    assert cache.length == 11
    for copy in range(11, 10 + group):
        assert np.array_equal(key[:, copy], key[:, 10])
    assert not np.array_equal(key[:, 9], key[:, 10])


def test_one_token_into_an_empty_cache_takes_the_ordinary_call(grouped):
    backend = edgegen.load(grouped("qwen2")).backend
    ids = _ids(5, seed=1)
    first = backend.forward(Feed(ids[:1]), backend.new_cache())[-1]
    whole = backend.forward(Feed(ids, rows=0), backend.new_cache())
    assert np.abs(first - whole[0]).max() < 1e-4


@pytest.mark.parametrize("bits", [None, 4])
def test_decode_up_to_the_last_position_of_the_context(grouped, bits):
    backend = edgegen.load(grouped("qwen2")).backend
    n = backend.context_length
    cache = backend.new_cache(None if bits is None else KVSpec(bits=bits))
    backend.forward(Feed(_ids(n - 2, seed=2)), cache)
    for token in (9, 10):
        logits = backend.forward(Feed([token]), cache)
    assert cache.length == n and np.isfinite(logits).all()
    assert cache.allocated >= n + backend.config.num_attention_heads // backend.config.num_key_value_heads - 1


@pytest.mark.parametrize("variant", ["model.onnx", "model.kv4.onnx"])
def test_every_layer_has_a_grouped_branch(grouped, variant):
    graph = onnx.load(str(grouped("qwen2") / variant), load_external_data=False).graph
    ifs = [n for n in graph.node if n.op_type == "If"]
    assert len(ifs) == 2  # the tiny config's layers
    for node in ifs:
        branch = {a.name: a.g for a in node.attribute}
        (grouped,) = [n for n in branch["then_branch"].node if n.op_type == "GroupQueryAttention"]
        (plain,) = [n for n in branch["else_branch"].node if n.op_type == "GroupQueryAttention"]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in grouped.attribute}
        assert attrs["num_heads"] == attrs["kv_num_heads"] and attrs["causal"] == 0
        if variant == "model.kv4.onnx":  # both calls read the same quantized cache with the same scales
            assert grouped.input[12:] == plain.input[12:] and grouped.input[12].startswith("kv_scale.")
            assert attrs["kv_cache_bit_width"] == 4


def test_models_get_the_grouped_step_only_where_it_pays(converted):
    from edgegen.converters.onnx.grouped_decode import pays
    from edgegen.archs import arch_module

    graph = onnx.load(str(converted("qwen2", "onnx") / "model.onnx"), load_external_data=False).graph
    assert not [n for n in graph.node if n.op_type == "If"]  # 2 over 2 heads, 512 tokens: it could not pay
    qwen05b = {"model_type": "qwen2", "hidden_size": 896, "num_attention_heads": 14, "num_key_value_heads": 2,
               "num_hidden_layers": 24, "intermediate_size": 4864, "vocab_size": 151936,
               "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1e6}
    assert pays(arch_module("qwen2").parse_config(qwen05b))  # groups of 7 over 32k tokens
