"""edgegen's outputs in the peers' runtimes: an MLX conversion is an mlx-lm folder (config.json with
mlx-lm's `quantization` entry, Hugging Face weight names, tokenizer files), so `mlx_lm.load` runs it;
an ONNX conversion carries `model.genai.onnx` + `genai_config.json`, so onnxruntime-genai runs it.
Both decode the same greedy tokens as edgegen."""

from __future__ import annotations

import json
import shutil

import pytest

import edgegen
from conftest import ARCHS
from edgegen.models import BUNDLED



PROMPT = [5, 17, 42, 99, 3, 250, 7, 64, 128, 11]


def mlx_lm_greedy(folder, ids, n):
    mlx_lm = pytest.importorskip("mlx_lm", reason="mlx-lm is not installed")
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_sampler

    model, _ = mlx_lm.load(str(folder))
    steps = generate_step(mx.array(ids), model, sampler=make_sampler(0.0), max_tokens=n)
    return [int(token) for token, _ in steps]


@pytest.mark.parametrize("quant", ["none", "q8", "q4"])
@pytest.mark.parametrize("arch", ARCHS)
def test_mlx_lm_loads_our_folder_and_decodes_our_tokens(arch, quant, converted):
    folder = converted(arch, "mlx", quant)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == arch
    assert ("quantization" in config) == (quant != "none")
    ours = edgegen.load(folder).generate(PROMPT, max_tokens=16, ignore_eos=True).token_ids
    assert mlx_lm_greedy(folder, PROMPT, 16) == ours


@pytest.mark.parametrize("arch", ARCHS)
def test_mlx_lm_reads_the_checkpoints_rope(arch, converted, checkpoints):
    """transformers >= 5 saves RoPE nested (rope_parameters), which mlx-lm's llama/qwen2/mistral do
    not read: they fell back to their defaults and decoded other tokens wherever the checkpoint's
    theta or scaling was not theirs. The folder gives RoPE's fields at the top level too."""
    pytest.importorskip("mlx_lm", reason="mlx-lm is not installed")
    import mlx_lm

    _, hf = checkpoints(arch)
    rope = dict(getattr(hf.config, "rope_parameters", None) or {})
    model, _ = mlx_lm.load(str(converted(arch, "mlx", "none")))
    assert float(model.args.rope_theta) == float(rope.get("rope_theta", getattr(hf.config, "rope_theta", 0)))
    if rope.get("rope_type", "default") != "default":
        assert model.args.rope_scaling["factor"] == rope["factor"]


def test_bundled_chat_model_in_mlx_lm(tmp_path):
    out = tmp_path / "tiny-chat-mlx"
    from click.testing import CliRunner

    from edgegen.cli import main

    result = CliRunner().invoke(main, ["convert", "tiny-chat", "-o", str(out), "--runtime", "mlx", "--dtype", "fp16"])
    assert result.exit_code == 0, result.output
    ours = edgegen.load(out)
    ids = ours.tokenizer.encode_chat([{"role": "user", "content": "What is a list?"}])
    assert mlx_lm_greedy(out, ids, 24) == ours.generate(ids, max_tokens=24, ignore_eos=True).token_ids


def genai_greedy(folder, ids, n):
    og = pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed")
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(ids) + n, min_length=len(ids) + n)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    out = []
    while not generator.is_done():
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
    return out


@pytest.mark.parametrize("quant", ["none", "q4"])
@pytest.mark.parametrize("arch", ARCHS)
def test_onnxruntime_genai_runs_our_folder_and_decodes_our_tokens(arch, quant, converted):
    folder = converted(arch, "onnx", quant)
    config = json.loads((folder / "genai_config.json").read_text())
    assert config["model"]["decoder"]["filename"] == "model.genai.onnx" and config["model"]["type"] == arch
    ours = edgegen.load(folder).generate(PROMPT, max_tokens=16, ignore_eos=True).token_ids
    assert genai_greedy(folder, PROMPT, 16) == ours


def test_the_genai_graph_reads_the_same_weights_file(converted):
    import onnx

    folder = converted("qwen2", "onnx")
    graph = onnx.load(str(folder / "model.genai.onnx"), load_external_data=False)
    places = {e.value for t in graph.graph.initializer for e in t.external_data if e.key == "location"}
    assert "model.onnx.data" in places
    extra = folder / "model.genai.onnx.data"
    assert not extra.exists() or extra.stat().st_size < 0.1 * (folder / "model.onnx.data").stat().st_size


# ------------------------------------------------------------------ their folders in edgegen

@pytest.fixture(scope="module")
def mlx_lm_folders(tmp_path_factory):
    """mlx_lm.convert's own output for the bundled chat model: fp16, and 4- and 8-bit (the
    mlx-community layout)."""
    pytest.importorskip("mlx_lm", reason="mlx-lm is not installed")
    from mlx_lm import convert

    from edgegen.models import BUNDLED

    made = {}
    for name, options in {"fp16": dict(dtype="float16"), "q4": dict(quantize=True, q_bits=4, q_group_size=64),
                          "q8": dict(quantize=True, q_bits=8, q_group_size=64)}.items():
        made[name] = tmp_path_factory.mktemp("mlx-lm") / name
        convert(str(BUNDLED / "tiny-chat"), mlx_path=str(made[name]), **options)
    return made


@pytest.mark.parametrize("kind", ["fp16", "q4", "q8"])
def test_edgegen_runs_an_mlx_lm_folder_as_mlx_lm_does(kind, mlx_lm_folders):
    folder = mlx_lm_folders[kind]
    model = edgegen.load(folder)
    assert model.manifest.source["layout"] == "mlx-lm" and not (folder / "edgegen.json").exists()
    ids = model.tokenizer.encode("The json module in Python")
    ours = model.generate(ids, max_tokens=16, ignore_eos=True).token_ids
    assert ours == mlx_lm_greedy(folder, ids, 16)
    lookup = model.generate(ids, max_tokens=16, ignore_eos=True, draft="prompt-lookup", num_draft=3)
    assert lookup.token_ids == ours and lookup.stats.strategy == "speculative"
    assert len(model.generate(ids, max_tokens=4, kv_bits=8).token_ids) == 4
    assert len(model.complete("The json", drafts=2, max_tokens=3).drafts) == 2


def test_mlx_lm_folders_from_the_command_line(mlx_lm_folders):
    from click.testing import CliRunner

    from edgegen.cli import main

    runner = CliRunner()
    folder = str(mlx_lm_folders["q4"])
    info = runner.invoke(main, ["info", folder])
    assert info.exit_code == 0 and "q4 (group size 64)" in info.output
    out = runner.invoke(main, ["generate", folder, "-p", "hi", "--max-tokens", "3"])
    assert out.exit_code == 0, out.output
    refused = runner.invoke(main, ["convert", folder, "-o", str(mlx_lm_folders["q4"].parent / "again")])
    assert refused.exit_code == 2 and "mlx-lm folder" in refused.output and "download" not in refused.output
    draft = runner.invoke(main, ["generate", folder, "-p", "hi", "--max-tokens", "3", "--draft", "q4"])
    assert draft.exit_code == 2 and "original checkpoint" in draft.output


@pytest.fixture(scope="module")
def genai_folders(tmp_path_factory):
    """onnxruntime-genai's model builder run on the bundled chat model, fp32 and int4, for the CPU."""
    pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed")
    import subprocess
    import sys

    from edgegen.models import BUNDLED

    made = {}
    for precision in ("fp32", "int4"):
        out = tmp_path_factory.mktemp("genai") / precision
        done = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-m", str(BUNDLED / "tiny-chat"),
                               "-i", str(BUNDLED / "tiny-chat"), "-o", str(out), "-p", precision, "-e", "cpu",
                               "-c", str(out.parent / "cache")], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        made[precision] = out
    return made


@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_edgegen_runs_a_genai_builder_folder_as_genai_does(precision, genai_folders):
    from edgegen.core.errors import CapabilityError

    folder = genai_folders[precision]
    model = edgegen.load(folder)
    assert model.manifest.source["layout"] == "onnxruntime-genai"
    ids = model.tokenizer.encode("The json module in Python")
    ours = model.generate(ids, max_tokens=16, ignore_eos=True).token_ids
    assert ours == genai_greedy(folder, ids, 16)
    for draft in ("prompt-lookup", "tiny-draft"):
        spec = model.generate(ids, max_tokens=16, ignore_eos=True, draft=draft, num_draft=3)
        assert spec.token_ids == ours and spec.stats.strategy == "speculative"
    with pytest.raises(CapabilityError, match="kv-bits"):
        model.generate(ids, max_tokens=2, kv_bits=8)
    with pytest.raises(CapabilityError, match="embeddings"):
        model.complete("The json", drafts=2)
    assert model.manifest.quantization.method == {"fp32": "none", "int4": "q4"}[precision]  # what info reports


def test_a_genai_folder_stops_where_genai_does(genai_folders, tmp_path):
    """genai stops at genai_config.json's eos_token_id (the checkpoint's generation_config list),
    which edgegen ignored: it went on past the end genai gives."""
    import shutil

    folder = tmp_path / "eos"
    shutil.copytree(genai_folders["fp32"], folder)
    ids = edgegen.load(folder).tokenizer.encode("The json module in Python")
    free = genai_greedy(folder, ids, 8)
    config = json.loads((folder / "genai_config.json").read_text())
    config["model"]["eos_token_id"] = [config["model"]["eos_token_id"], free[2]] \
        if isinstance(config["model"]["eos_token_id"], int) else config["model"]["eos_token_id"] + [free[2]]
    (folder / "genai_config.json").write_text(json.dumps(config))
    assert edgegen.load(folder).generate(ids, max_tokens=8).token_ids == free[:2]


def test_genai_folders_from_the_command_line(genai_folders):
    from click.testing import CliRunner

    from edgegen.cli import main

    runner = CliRunner()
    folder = str(genai_folders["int4"])
    assert runner.invoke(main, ["info", folder]).exit_code == 0
    out = runner.invoke(main, ["chat", folder], input="hi\n/quit\n")
    assert out.exit_code == 0, out.output
    refused = runner.invoke(main, ["convert", folder, "-o", str(genai_folders["int4"].parent / "again")])
    assert refused.exit_code == 2 and "onnxruntime-genai folder" in refused.output


def test_an_mlx_community_hub_id_runs_from_the_cache(mlx_lm_folders, tmp_path, monkeypatch):
    import shutil

    import huggingface_hub.constants as constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--mlx-community--tiny-chat-4bit"
    shutil.copytree(mlx_lm_folders["q4"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model = edgegen.load("mlx-community/tiny-chat-4bit")
    assert model.manifest.source["layout"] == "mlx-lm" and model.manifest.quantization.method == "q4"
    assert model.generate("hi", max_tokens=3, ignore_eos=True).stats.generated_tokens == 3


def build_genai(src, out, precision):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-m", str(src), "-i", str(src),
                           "-o", str(out), "-p", precision, "-e", "cpu", "-c", str(out) + "-cache"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "llama", "mistral"])
def test_peer_folders_of_each_architecture_run_in_edgegen(arch, checkpoints, tmp_path):
    """mlx_lm.convert (fp32, q4) and onnxruntime-genai's builder (fp32, int4) on the architecture's
    checkpoint; edgegen decodes each peer's tokens. Not mlx-lm on the Llama checkpoint: its llama3
    RoPE scaling (factor 8 over an original context of 32, an extreme test setting) differs from
    transformers' by 3e-3 in the logits, where edgegen's matches transformers to 1e-4."""
    pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed")
    pytest.importorskip("mlx_lm", reason="mlx-lm is not installed")
    from mlx_lm import convert

    src = checkpoints(arch)[0]
    folders = {}
    if arch != "llama":
        for name, options in {"mlx-lm fp32": {}, "mlx-lm q4": dict(quantize=True, q_bits=4, q_group_size=32)}.items():
            folders[name] = tmp_path / name.replace(" ", "-")
            convert(str(src), mlx_path=str(folders[name]), dtype="float32", **options)
    folders.update({"genai fp32": build_genai(src, tmp_path / "genai-fp32", "fp32"),
                    "genai int4": build_genai(src, tmp_path / "genai-int4", "int4")})
    for kind, folder in folders.items():
        ours = edgegen.load(folder).generate(PROMPT, max_tokens=12, ignore_eos=True).token_ids
        theirs = mlx_lm_greedy(folder, PROMPT, 12) if kind.startswith("mlx") else genai_greedy(folder, PROMPT, 12)
        assert ours == theirs, kind


def test_damaged_peer_folders_are_one_line(tmp_path):
    from click.testing import CliRunner

    from edgegen.cli import main

    genai = tmp_path / "genai"
    genai.mkdir()
    (genai / "genai_config.json").write_text("{not json")
    out = CliRunner().invoke(main, ["generate", str(genai), "-p", "hi"])
    assert out.exit_code == 2 and "genai_config.json cannot be read" in out.output and "Traceback" not in out.output
    (genai / "genai_config.json").write_text(json.dumps({"model": {"type": "llama", "vocab_size": 8, "context_length": 64}}))
    out = CliRunner().invoke(main, ["generate", str(genai), "-p", "hi"])
    assert out.exit_code == 2 and "genai_config.json cannot be read" in out.output and "decoder" in out.output

    mlx = tmp_path / "mlx"
    shutil.copytree(BUNDLED / "tiny-chat", mlx, ignore=shutil.ignore_patterns("ngram"))
    config = json.loads((mlx / "config.json").read_text())
    for damage in ({"quantization": "4bit"}, {"quantization": {"bits": 4}}, {"vocab_size": None},
                   {"max_position_embeddings": "abc"}):
        (mlx / "config.json").write_text(json.dumps({**config, "quantization": {"group_size": 64, "bits": 4},
                                                     **damage}))
        out = CliRunner().invoke(main, ["generate", str(mlx), "-p", "hi"])
        assert out.exit_code == 2 and "Traceback" not in out.output and len(out.output.strip().splitlines()) == 1, \
            (damage, out.output)
