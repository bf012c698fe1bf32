"""NPU bundles (static-shape graphs of standard ONNX ops, host-kept KV cache): parity with
transformers and with the dynamic graphs, every strategy's tokens, the masks of diffusion LLMs
against their reference, and the refusals. Run on the CPU provider here; test_npu_qnn.py puts the
same bundles on the QNN HTP backend where onnxruntime-qnn is installed."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

import edgegen
from conftest import ARCHS
from dllm_checkpoints import BLOCK, DLLMS, block_mask, build
from edgegen.cli import main
from edgegen.core.errors import CapabilityError, ConfigError, ContextOverflow
from edgegen.core.protocols import Feed
from edgegen.models import BUNDLED

PROMPT = [5, 17, 42, 99, 3, 250, 7, 64, 128, 11, 300, 21, 8, 77, 190, 33, 2, 9, 14]  # 19 > one chunk of 8
NPU = ("--target", "npu", "--context", "64", "--chunk", "8")  # fp32 (--quant none, given by `converted`)
ASK = [{"role": "user", "content": "What is a list?"}]


@pytest.fixture(scope="module")
def bundles(npu_bundles):
    """Bundled model name -> its NPU bundle over 256 slots (fp32 unless flags say otherwise)."""
    return lambda name, *flags: npu_bundles(name, "--context", "256", *(flags or ("--quant", "none")))


def standard_ops_only(folder) -> set[str]:
    ops = set()
    for name in ("npu.chunk.onnx", "npu.step.onnx"):
        model = onnx.load(str(folder / name), load_external_data=False)
        assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}
        for node in model.graph.node:
            assert node.domain in ("", "ai.onnx"), node
            ops.add(node.op_type)
        for value in list(model.graph.input) + list(model.graph.output):
            dims = value.type.tensor_type.shape.dim
            assert all(d.HasField("dim_value") for d in dims), f"{value.name} has a dynamic shape"
    return ops


# ------------------------------------------------------------------ graphs and parity

@pytest.mark.parametrize("arch", ARCHS)
def test_bundle_logits_match_transformers(arch, checkpoints, converted):
    folder = converted(arch, "onnx", "none", *NPU)
    assert "GroupQueryAttention" not in standard_ops_only(folder)
    _, hf = checkpoints(arch)
    with torch.no_grad():
        reference = hf(torch.tensor([PROMPT])).logits[0].numpy()
    model = edgegen.load(folder)
    np.testing.assert_allclose(model.logits(PROMPT), reference, atol=1e-4, rtol=0)  # three chunk runs
    session = model.session
    pieces = [session.feed(PROMPT[:3], last_only=False)] + [session.feed([t], last_only=False) for t in PROMPT[3:]]
    np.testing.assert_allclose(np.concatenate(pieces), reference, atol=1e-4, rtol=0)  # chunk, then steps


def test_one_file_of_weights_serves_both_graphs(bundles):
    folder = bundles("tiny-chat")
    sizes = {p.name: p.stat().st_size for p in folder.iterdir()}
    assert sizes["npu.chunk.onnx"] < 2**20 and sizes["npu.step.onnx"] < 2**20
    assert sizes["npu.onnx.data"] > 10 * 2**20
    out = CliRunner().invoke(main, ["info", str(folder)])
    assert "NPU bundle" in out.output and "chunk 16 inputs" in out.output


# ------------------------------------------------------------------ every strategy

@pytest.mark.parametrize("kwargs", [{}, {"temperature": 0.8, "seed": 3}, {"draft": "prompt-lookup", "num_draft": 4},
                                    {"draft": "tiny-draft", "num_draft": 4}, {"json_schema": {"type": "object"}}])
def test_strategies_give_the_dynamic_graphs_tokens(bundles, kwargs):
    dynamic, bundle = edgegen.load("tiny-chat"), edgegen.load(bundles("tiny-chat"))
    ours = bundle.chat(ASK, max_tokens=48, **kwargs)
    assert ours.token_ids == dynamic.chat(ASK, max_tokens=48, **kwargs).token_ids
    assert ours.stats.generated_tokens > 0


def test_superposed_drafts_on_the_bundle(bundles):
    dynamic, bundle = edgegen.load("tiny-chat"), edgegen.load(bundles("tiny-chat"))
    ours = [d.token_ids for d in bundle.complete("The json module", drafts=3).drafts]
    assert ours == [d.token_ids for d in dynamic.complete("The json module", drafts=3).drafts]


@pytest.mark.parametrize("kwargs", [{}, {"threshold": 0.9}, {"rule": "fixed", "steps": 4}, {"rule": "entropy_bounded"}])
def test_block_diffusion_on_the_bundle(bundles, kwargs):
    dynamic, bundle = edgegen.load("tiny-chat-bd"), edgegen.load(bundles("tiny-chat-bd"))
    ours = bundle.chat(ASK, max_tokens=32, **kwargs)
    assert ours.token_ids == dynamic.chat(ASK, max_tokens=32, **kwargs).token_ids


LONG = [{"role": "user", "content": "What does the json module do in Python and how do I use json.dumps with indent?"}]


@pytest.mark.parametrize("block_size", [8, 12, 16])
def test_block_diffusion_on_the_bundle_past_one_chunk(bundles, block_size):
    """A prompt of several blocks, and blocks up to the chunk (16): the committed feeds longer than a
    chunk (the prompt's blocks; a finished block fused with the next) run cut between blocks (they
    were refused: the default bundle failed any prompt of 24 tokens or more)."""
    dynamic, bundle = edgegen.load("tiny-chat-bd"), edgegen.load(bundles("tiny-chat-bd"))
    ours = bundle.chat(LONG, max_tokens=40, block_size=block_size)
    assert ours.token_ids == dynamic.chat(LONG, max_tokens=40, block_size=block_size).token_ids
    assert ours.stats.prompt_tokens > 16  # longer than one chunk


def test_a_block_larger_than_the_chunk_is_one_line(bundles):
    with pytest.raises(CapabilityError, match="decode with --block-size 16 or less"):
        edgegen.load(bundles("tiny-chat-bd")).chat(ASK, max_tokens=8, block_size=32)


# ------------------------------------------------------------------ masks, against the reference

@pytest.mark.parametrize("name", ["sdar", "dream", "bd3lm", "llada"])
def test_masks_match_the_reference(name, tmp_path):
    reference = build(name, tmp_path / "hf")
    out = tmp_path / "npu"
    result = CliRunner().invoke(main, ["convert", str(tmp_path / "hf"), "-o", str(out), "--target", "npu",
                                       "--context", "64", "--chunk", "32", "--quant", "none"])
    assert result.exit_code == 0, result.output
    backend = edgegen.load(out).backend
    ids = PROMPT[:16]
    block = DLLMS[name][2] == "block"
    blocks = [i // BLOCK for i in range(16)] if block else [0] * 16
    allowed = block_mask(16, BLOCK) if block else np.ones((16, 16), bool)
    ours = backend.forward(Feed(ids, blocks=blocks, commit=False), backend.new_cache())
    np.testing.assert_allclose(ours, reference(ids, allowed), atol=1e-4, rtol=0)
    # Hidden cache slots: keys 4..8 hidden from a block scored over the cache = the reference's mask.
    cache = backend.new_cache()
    backend.forward(Feed(ids[:12], blocks=blocks[:12]), cache)
    scored = backend.forward(Feed(ids[12:16], blocks=[0] * 4, hidden=(4, 8), commit=False), cache)
    seen = allowed.copy()
    seen[:12, 12:] = False  # the committed inputs never saw the block
    hidden = seen.copy()
    hidden[12:, 4:8] = False
    np.testing.assert_allclose(scored, reference(ids, hidden)[12:16], atol=1e-4, rtol=0)
    assert np.abs(reference(ids, hidden)[12:] - reference(ids, seen)[12:]).max() > 1e-3  # 10x the tolerance: it can fail


# ------------------------------------------------------------------ refusals

def test_what_a_bundle_cannot_do_is_one_line(bundles):
    bundle = edgegen.load(bundles("tiny-chat"))
    with pytest.raises(CapabilityError, match="kv-bits"):
        bundle.generate("x", kv_bits=8, max_tokens=2)
    backend = bundle.backend
    with pytest.raises(CapabilityError, match="larger --chunk"):
        backend.forward(Feed(list(range(3, 40)), commit=False), backend.new_cache())
    with pytest.raises(ContextOverflow, match="larger --context"):
        backend.forward(Feed(list(range(3, 260))), backend.new_cache())


@pytest.mark.parametrize("args, words", [
    (["--target", "npu", "--context", "8"], "--context 8"),
    (["--target", "npu", "--chunk", "1"], "--chunk 1"),
    (["--target", "npu", "--quant", "q4"], "not offered for NPU bundles"),
    (["--target", "npu", "--runtime", "mlx"], "--runtime onnx"),
    (["--context", "64"], "add --target npu"),
    (["--target", "npu", "--calibration", "/nonexistent.txt", "--quant", "w8a16"], "no such file"),
    (["--target", "npu", "--calibration", __file__], "applies to --quant w8a16 or w4a16"),
])
def test_bad_npu_conversions_are_one_line(args, words, tmp_path):
    result = CliRunner().invoke(main, ["convert", "tiny-chat", "-o", str(tmp_path / "out"), *args])
    assert result.exit_code == 2 and words in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_a_bundle_smaller_than_a_diffusion_block_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="block must fit one chunk"):
        edgegen.convert(str(BUNDLED / "tiny-chat-bd"), tmp_path / "out", target="npu", chunk=4)


def test_fp16_bundle_agrees_with_fp32(bundles):
    fp32, fp16 = edgegen.load(bundles("tiny-chat")), edgegen.load(bundles("tiny-chat", "--quant", "fp16"))
    from edgegen.core.data import HELDOUT, bundled_text

    ids = fp32.tokenizer.encode(bundled_text(HELDOUT))[:250]
    a, b = fp32.logits(ids), fp16.logits(ids)
    assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.99


def perplexity(logits: np.ndarray, ids: list[int]) -> float:
    z = logits[:-1] - logits[:-1].max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(np.exp(-logp[np.arange(len(ids) - 1), ids[1:]].mean()))


def test_w8a16_bundle_keeps_the_fp32_models_predictions(bundles):
    """QDQ (int8 weights per channel, uint16 activations) from onnxruntime's QNN tooling, run by the
    CPU provider (the HTP computes the same QDQ graph: test_npu_qnn.py)."""
    folder = bundles("tiny-chat", "--quant", "w8a16")
    graph = onnx.load(str(folder / "npu.step.onnx"), load_external_data=False)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in graph.graph.node}
    from edgegen.core.data import HELDOUT, bundled_text

    reference, quantized = edgegen.load("tiny-chat"), edgegen.load(folder)
    ids = reference.tokenizer.encode(bundled_text(HELDOUT))[:250]
    a, b = reference.logits(ids), quantized.logits(ids)
    assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.97
    assert abs(perplexity(b, ids) / perplexity(a, ids) - 1) <= 0.03
    assert quantized.chat(ASK, max_tokens=16).stats.generated_tokens > 0


def test_w4a16_bundle_is_int4_and_stays_near_the_model(bundles):
    """Per-channel int4 weights (QDQ, opset 21): half the w8a16 weights file; on tiny-chat's narrow
    layers it costs about 15% perplexity (docs/npu.md), so this is a floor, not the goal."""
    folder = bundles("tiny-chat", "--quant", "w4a16")
    assert (folder / "npu.onnx.data").stat().st_size < 0.6 * (bundles("tiny-chat", "--quant", "w8a16")
                                                              / "npu.onnx.data").stat().st_size
    from edgegen.core.data import HELDOUT, bundled_text

    reference, quantized = edgegen.load("tiny-chat"), edgegen.load(folder)
    ids = reference.tokenizer.encode(bundled_text(HELDOUT))[:250]
    assert perplexity(quantized.logits(ids), ids) / perplexity(reference.logits(ids), ids) < 1.3


def test_a_provider_missing_from_this_build_runs_the_bundle_on_the_cpu(bundles, capfd):
    import onnxruntime

    if "CoreMLExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime build has CoreML")
    model = edgegen.load(bundles("tiny-chat"), provider="coreml")
    assert model.backend.provider == "cpu" and "not in this onnxruntime build" in capfd.readouterr().err


def test_w8a16_calibrates_on_a_given_text(tmp_path):
    from edgegen.core.data import HELDOUT, bundled_text

    text = tmp_path / "calibration.txt"
    text.write_text(bundled_text(HELDOUT), encoding="utf-8")
    out = tmp_path / "draft"
    result = CliRunner().invoke(main, ["convert", "tiny-draft", "-o", str(out), "--target", "npu", "--context", "128",
                                       "--quant", "w8a16", "--calibration", str(text)])
    assert result.exit_code == 0, result.output
    assert np.isfinite(edgegen.load(out).logits([5, 17, 42])).all()


def test_bad_qnn_options_and_a_damaged_npu_entry_are_one_line(bundles, tmp_path, monkeypatch):
    from edgegen.runtimes.onnx.session import qnn_options

    monkeypatch.setenv("EDGEGEN_QNN_OPTIONS", "[1, 2]")
    with pytest.raises(ConfigError, match="must be a JSON object"):
        qnn_options()
    folder = tmp_path / "bundle"
    shutil.copytree(bundles("tiny-chat"), folder)
    manifest = json.loads((folder / "edgegen.json").read_text())
    (folder / "edgegen.json").write_text(json.dumps({**manifest, "npu": {"chunk": "x"}}))
    with pytest.raises(ConfigError, match="edgegen.json is corrupt"):
        edgegen.load(folder)


def test_kv_bits_auto_on_a_bundle_is_refused_before_measuring(bundles):
    result = CliRunner().invoke(main, ["generate", str(bundles("tiny-chat")), "-p", "hi", "--kv-bits", "auto"])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "keeps a float KV cache" in lines[0], result.stderr
