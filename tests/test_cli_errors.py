"""Bad input: one clear line on stderr, exit code 2, no traceback, nothing half-written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from edgegen.core.errors import EdgegenError


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgegen", *args], capture_output=True, text=True, input=stdin,
                          timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("edgegen: error:"), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0]


@pytest.fixture()
def ckpt_copy(checkpoints, tmp_path):
    src, _ = checkpoints("llama")
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst)
    return dst


def assert_nothing_written(parent, name="out"):
    assert sorted(p.name for p in parent.iterdir() if p.name.startswith((name, f".{name}"))) == []


def test_missing_path(tmp_path):
    assert_one_line_error(run("convert", str(tmp_path / "nope" / "model"), "-o", str(tmp_path / "out")),
                          "neither a folder")
    assert_nothing_written(tmp_path)


def test_unsupported_architecture(ckpt_copy, tmp_path):
    config = json.loads((ckpt_copy / "config.json").read_text())
    (ckpt_copy / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    assert_one_line_error(run("convert", str(ckpt_copy), "-o", str(tmp_path / "out")), "gpt2", "llama, mistral")
    assert_nothing_written(tmp_path)


def test_corrupt_safetensors(ckpt_copy, tmp_path):
    weights = ckpt_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: 5000])
    assert_one_line_error(run("convert", str(ckpt_copy), "-o", str(tmp_path / "out")), "model.safetensors")
    assert_nothing_written(tmp_path)


def test_pickled_weights_are_refused(ckpt_copy, tmp_path):
    (ckpt_copy / "model.safetensors").rename(ckpt_copy / "pytorch_model.bin")
    assert_one_line_error(run("convert", str(ckpt_copy), "-o", str(tmp_path / "out")), "never loaded")
    assert_nothing_written(tmp_path)


def test_missing_tokenizer(ckpt_copy, tmp_path):
    (ckpt_copy / "tokenizer.json").unlink()
    assert_one_line_error(run("convert", str(ckpt_copy), "-o", str(tmp_path / "out")), "tokenizer")
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("flags,words", [
    (["--quant", "none", "--group-size", "64"], ["--group-size"]),
    (["--runtime", "onnx", "--dtype", "fp16"], ["fp32"]),
])
def test_conflicting_flags(checkpoints, tmp_path, flags, words):
    src, _ = checkpoints("llama")
    assert_one_line_error(run("convert", str(src), "-o", str(tmp_path / "out"), *flags), *words)
    assert_nothing_written(tmp_path)


def test_existing_output_needs_force(converted, checkpoints):
    out = converted("llama", "onnx")
    before = sorted(p.name for p in out.iterdir())
    assert_one_line_error(run("convert", str(checkpoints("llama")[0]), "-o", str(out)), "--force")
    assert sorted(p.name for p in out.iterdir()) == before


def test_uncached_repo_offline(tmp_path):
    assert_one_line_error(run("convert", "edgegen-tests/not-a-model", "-o", str(tmp_path / "out")), "offline")
    assert_nothing_written(tmp_path)


def test_prompt_longer_than_context(converted):
    long_prompt = " ".join(["The number 12 follows 11."] * 200)
    result = run("generate", str(converted("llama", "onnx")), "--raw", "-p", "-", stdin=long_prompt)
    assert_one_line_error(result, "context")


def test_not_a_converted_model(tmp_path):
    assert_one_line_error(run("info", str(tmp_path)), "edgegen convert")


def test_interrupted_convert_leaves_nothing(checkpoints, tmp_path, monkeypatch):
    from edgegen.converters import convert as convert_module

    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(convert_module, "_manifest", explode)
    with pytest.raises(KeyboardInterrupt):
        convert_module.convert(str(checkpoints("llama")[0]), tmp_path / "out")
    assert_nothing_written(tmp_path)


def test_every_user_error_exits_with_code_2():
    assert EdgegenError.exit_code == 2


@pytest.mark.parametrize("flags, named", [(["--temp", "-1"], "--temp "), (["--top-p", "2"], "--top-p "),
                                          (["--kv-group-size", "5"], "--kv-group-size "), (["-m", "0"], "--max-tokens ")])
def test_option_errors_name_the_flag_the_user_typed(converted, flags, named):
    result = run("generate", str(converted("qwen2", "onnx")), "-p", "hi", *flags)
    assert_one_line_error(result, named)


@pytest.mark.parametrize("args, words", [
    (["generate", "-p", "hi", "--num-draft", "4"], "--num-draft applies to speculative decoding"),
    (["generate", "-p", "hi", "--max-draft", "3"], "--max-draft applies to speculative decoding"),
    (["generate", "-p", "hi", "--device", "foo"], "device must be gpu, cpu or auto"),
    (["generate", "-p", "hi", "--device", "cpu"], "--device picks MLX's device"),
    (["generate", "tiny-chat-bd", "-p", "hi", "--refresh-every", "3"], "--refresh-every refreshes"),
    (["generate", "tiny-chat-bd", "-p", "hi", "--rule", "threshold", "--steps", "2"], "--steps spreads"),
    (["generate", "tiny-chat-bd", "-p", "hi", "--rule", "fixed", "--threshold", "0.1"], "--threshold applies"),
    (["complete", "tiny-chat-bd", "-p", "The json"], "diffusion LLM"),
    (["perplexity", "tiny-chat-bd", "--max-tokens", "20"], "diffusion LLM"),
])
def test_flags_that_would_do_nothing_are_refused(bundled_converted, args, words):
    """docs/cli.md: options of another strategy, runtime or family are refused rather than ignored."""
    assert_one_line_error(run(*args), words)


@pytest.fixture(scope="module")
def bundled_converted():
    """The bundled models converted into the cache first, so that its one-time line ("converted
    ... into ...") is not taken for a second line of an error."""
    for name in ("tiny-chat", "tiny-chat-bd"):
        assert run("info", name).returncode == 0


@pytest.mark.parametrize("field, value", [("source", "x"), ("config", None), ("files", 5), ("context_length", "x"),
                                          ("format_version", "x"), ("context_length", True), ("quantization", "q4")])
def test_a_damaged_manifest_is_one_line(converted, tmp_path, field, value):
    """A field of the wrong type in edgegen.json (hand-edited, damaged) is named now, not a traceback later."""
    folder = tmp_path / "m"
    shutil.copytree(converted("qwen2", "onnx"), folder)
    manifest = json.loads((folder / "edgegen.json").read_text())
    manifest[field] = value
    (folder / "edgegen.json").write_text(json.dumps(manifest))
    assert_one_line_error(run("generate", str(folder), "-p", "hi", "-m", "2"), "edgegen.json is corrupt",
                          "convert the model again")


def test_an_ngram_store_is_not_taken_for_a_model():
    from edgegen.models import BUNDLED

    assert_one_line_error(run("info", str(BUNDLED / "tiny-chat" / "ngram")), "is an n-gram store")


@pytest.mark.parametrize("args, named", [(["complete", "-p", "x", "-k", "0"], "--drafts "),
                                         (["complete", "-p", "x", "--ngram-weight", "2"], "--ngram-weight "),
                                         (["complete", "-p", "x", "-m", "0"], "--max-tokens "),
                                         (["perplexity", "--kv-group-size", "7"], "--kv-group-size ")])
def test_complete_and_perplexity_name_the_flag_too(bundled_converted, args, named):
    assert_one_line_error(run(*args), named)


def test_an_mlx_group_size_that_quantizes_nothing_is_refused(checkpoints, tmp_path):
    """These checkpoints' widths are 64 and 96: at --group-size 128 MLX would quantize no layer and
    the folder would call itself q4 (it did, byte for byte the fp32 weights); 64 keeps the 96-wide
    layers in float and says so."""
    src = str(checkpoints("qwen2")[0])
    refused = run("convert", src, "-o", str(tmp_path / "g128"), "--runtime", "mlx", "--quant", "q4",
                  "--group-size", "128")
    assert_one_line_error(refused, "--group-size 128 divides none", "--group-size 32")
    assert not (tmp_path / "g128").exists()
    some = run("convert", src, "-o", str(tmp_path / "g64"), "--runtime", "mlx", "--quant", "q4", "--group-size", "64")
    assert some.returncode == 0 and "kept in float" in some.stderr


def test_a_revision_for_a_local_folder_is_refused(checkpoints, tmp_path):
    assert_one_line_error(run("convert", str(checkpoints("qwen2")[0]), "-o", str(tmp_path / "out"), "--revision",
                              "main"), "--revision", "local folder")
    assert not (tmp_path / "out").exists()
