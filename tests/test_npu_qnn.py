"""NPU bundles on Qualcomm's HTP backend (onnxruntime-qnn; its x86-64 Linux wheel simulates the
Hexagon NPU, 30-200x slower than the CPU provider: tiny models, few tokens). Every graph loads
with the CPU fallback disabled, so passing means every node ran on QNN."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import edgegen
from edgegen.cli import main
from edgegen.core.errors import BackendUnavailable

pytest.importorskip("onnxruntime_qnn", reason="onnxruntime-qnn is not installed (Linux x86-64 / Windows only)")

ASK = [{"role": "user", "content": "What is a list?"}]


@pytest.fixture(scope="module")
def bundles(npu_bundles):
    """Bundled model name -> its NPU bundle over 128 slots (fp16 unless flags say otherwise)."""
    return lambda name, *flags: npu_bundles(name, "--context", "128", *flags)


@pytest.mark.parametrize("name", ["tiny-chat", "tiny-draft", "tiny-chat-bd"])
def test_every_graph_runs_whole_on_qnn(bundles, name):
    out = CliRunner().invoke(main, ["info", str(bundles(name)), "--provider", "qnn"])
    assert out.exit_code == 0, out.output
    lines = [line for line in out.output.splitlines() if " on qnn " in line]
    assert len(lines) == 2 and all("on the CPU" not in line for line in lines), lines
    taken = [line.split()[-4:] for line in lines]
    assert all(t[0] == t[2] for t in taken), lines  # "N of N nodes"


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "llama"])
def test_architectures_load_with_the_fallback_disabled(arch, converted):
    folder = converted(arch, "onnx", "fp16", "--target", "npu", "--context", "64", "--chunk", "8")
    model = edgegen.load(folder, provider="qnn")  # raises if any node is left for the CPU
    assert model.backend.provider == "qnn" and model.logits([5, 17, 42]).shape[0] == 3


def test_fp16_on_the_htp_agrees_with_the_fp32_cpu_graph(bundles):
    from edgegen.core.data import HELDOUT, bundled_text

    npu, cpu = edgegen.load(bundles("tiny-chat"), provider="qnn"), edgegen.load("tiny-chat")
    ids = cpu.tokenizer.encode(bundled_text(HELDOUT))[:96]
    agree = (npu.logits(ids).argmax(-1) == cpu.logits(ids).argmax(-1)).mean()
    assert agree >= 0.99


@pytest.mark.parametrize("kwargs", [{}, {"draft": "prompt-lookup", "num_draft": 3}, {"draft": "tiny-draft", "num_draft": 3}])
def test_strategies_on_the_htp_equal_the_bundle_on_the_cpu(bundles, kwargs):
    npu, cpu = edgegen.load(bundles("tiny-chat"), provider="qnn"), edgegen.load(bundles("tiny-chat"))
    assert npu.chat(ASK, max_tokens=10, **kwargs).token_ids == cpu.chat(ASK, max_tokens=10, **kwargs).token_ids


def test_block_diffusion_and_superposed_on_the_htp(bundles):
    npu, cpu = edgegen.load(bundles("tiny-chat-bd"), provider="qnn"), edgegen.load(bundles("tiny-chat-bd"))
    assert npu.chat(ASK, max_tokens=16).token_ids == cpu.chat(ASK, max_tokens=16).token_ids
    npu, cpu = edgegen.load(bundles("tiny-chat"), provider="qnn"), edgegen.load(bundles("tiny-chat"))
    assert ([d.token_ids for d in npu.complete("The json", drafts=2, max_tokens=4).drafts]
            == [d.token_ids for d in cpu.complete("The json", drafts=2, max_tokens=4).drafts])


def test_the_compiled_graph_is_cached_and_a_damaged_cache_rebuilt(bundles, capfd):
    folder = bundles("tiny-draft")
    for stale in folder.glob("*.ctx*"):
        stale.unlink()
    edgegen.load(folder, provider="qnn")
    cached = sorted(p.name for p in folder.glob("npu.step.qnn-*.ctx.onnx"))
    assert len(cached) == 1
    stamp = (folder / cached[0]).stat().st_mtime_ns
    edgegen.load(folder, provider="qnn")
    assert (folder / cached[0]).stat().st_mtime_ns == stamp  # reused, not written again
    (folder / cached[0]).write_bytes(b"damaged")
    model = edgegen.load(folder, provider="qnn")
    assert "compiling npu.step.onnx again" in capfd.readouterr().err
    assert model.logits([5, 6]).shape[0] == 2 and (folder / cached[0]).stat().st_size > 100


def test_a_graph_the_htp_cannot_take_whole_is_one_line(bundles, tmp_path):
    """A node QNN refuses (IsInf) added to the step graph: the load fails in one line instead of
    running that node on the CPU, and the CPU provider still runs the bundle."""
    import shutil

    import onnx

    folder = tmp_path / "odd"
    shutil.copytree(bundles("tiny-draft"), folder, ignore=shutil.ignore_patterns("*.ctx*"))
    graph = onnx.load(str(folder / "npu.step.onnx"), load_external_data=False)
    graph.graph.node.append(onnx.helper.make_node("IsInf", ["logits"], ["logits_inf"]))
    graph.graph.output.append(onnx.helper.make_tensor_value_info("logits_inf", onnx.TensorProto.BOOL, None))
    onnx.save(graph, str(folder / "npu.step.onnx"))
    with pytest.raises(BackendUnavailable, match="cannot run all of npu.step.onnx.*do not fall back to the CPU"):
        edgegen.load(folder, provider="qnn")
    assert np.isfinite(edgegen.load(folder).logits([5, 6])).all()


def test_w8a16_runs_on_the_htp_as_on_the_cpu(bundles):
    folder = bundles("tiny-chat", "--quant", "w8a16")
    npu, cpu = edgegen.load(folder, provider="qnn"), edgegen.load(folder)  # the fallback is disabled on QNN
    ids = cpu.tokenizer.encode("The json module turns Python objects into text and text back into objects.")
    assert (npu.logits(ids).argmax(-1) == cpu.logits(ids).argmax(-1)).mean() >= 0.95
    out = CliRunner().invoke(main, ["info", str(folder), "--provider", "qnn"])
    lines = [line for line in out.output.splitlines() if " on qnn " in line]
    assert len(lines) == 2 and all("on the CPU" not in line for line in lines), lines  # QDQ edges included
