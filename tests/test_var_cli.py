"""`edgegen convert` on VAR checkpoints (good and bad), `edgegen image` and `edgegen info`."""

from __future__ import annotations

import json
import pickle
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file, save_file

from edgegen.cli import main
from edgegen.converters.var import is_var_checkpoint
from var_fixtures import build_reference, convert_cli, save_checkpoint


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def one_line_error(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgegen: error:"), result.output
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    var, vae = build_reference("l2norm")
    return save_checkpoint(var, vae, tmp_path_factory.mktemp("var-src"))


@pytest.fixture(scope="module")
def converted(checkpoint, tmp_path_factory):
    return convert_cli(checkpoint, tmp_path_factory.mktemp("var-out") / "onnx", "--runtime", "onnx")


# ----------------------------------------------------------------------------- convert
def test_pth_files_read_weights_only_and_convert_like_safetensors(tmp_path, checkpoint, converted):
    var, vae = build_reference("l2norm")
    src = save_checkpoint(var, vae, tmp_path / "pth", fmt="pth")
    assert is_var_checkpoint(src) and not is_var_checkpoint(tmp_path)
    out = convert_cli(src, tmp_path / "out", "--runtime", "onnx")
    ours, theirs = load_file(str(out / "host.safetensors")), load_file(str(converted / "host.safetensors"))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


class NotWeights:
    """Any object a weights-only load must refuse (and never construct)."""


def test_a_pickle_that_is_not_weights_only_fails_with_one_line(tmp_path, checkpoint):
    src = tmp_path / "src"
    src.mkdir()
    (src / "vae.safetensors").write_bytes((checkpoint / "vae.safetensors").read_bytes())
    with open(src / "var.pth", "wb") as f:
        pickle.dump({"blocks.0.attn.proj.weight": NotWeights()}, f)
    one_line_error(run("convert", str(src), "-o", str(tmp_path / "out")), "var.pth", "not a weights-only")
    assert not (tmp_path / "out").exists()


def test_wrong_keys_fail_with_one_line(tmp_path, checkpoint):
    src = tmp_path / "src"
    src.mkdir()
    state = load_file(str(checkpoint / "var.safetensors"))
    state["blocks.0.attn.qkv.weight"] = state.pop("blocks.0.attn.mat_qkv.weight")
    save_file(state, str(src / "var.safetensors"))
    (src / "vae.safetensors").write_bytes((checkpoint / "vae.safetensors").read_bytes())
    one_line_error(run("convert", str(src), "-o", str(tmp_path / "out")), "var.safetensors", "mat_qkv")


def test_a_misshapen_tensor_fails_with_one_line(tmp_path, checkpoint):
    src = tmp_path / "src"
    src.mkdir()
    state = load_file(str(checkpoint / "vae.safetensors"))
    state["post_quant_conv.bias"] = torch.zeros(3)
    save_file(state, str(src / "vae.safetensors"))
    (src / "var.safetensors").write_bytes((checkpoint / "var.safetensors").read_bytes())
    one_line_error(run("convert", str(src), "-o", str(tmp_path / "out")), "post_quant_conv")


def test_pth_without_torch_names_the_extra(tmp_path, monkeypatch):
    var, vae = build_reference("l2norm")
    src = save_checkpoint(var, vae, tmp_path / "pth", fmt="pth")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    one_line_error(run("convert", str(src), "-o", str(tmp_path / "out")), "edgegen[pth]")


@pytest.mark.parametrize("args,words", [
    (("--dtype", "bf16"), ("bf16",)), (("--dtype", "fp16", "--quant", "q8"), ("choose one",)),
    (("--quant", "q8", "--group-size", "64"), ("per-channel",)),
])
def test_option_combinations_onnx_cannot_do_are_refused(tmp_path, checkpoint, args, words):
    one_line_error(run("convert", str(checkpoint), "-o", str(tmp_path / "out"), *args), *words)


def test_info_describes_the_var_family(converted):
    result = run("info", str(converted))
    assert result.exit_code == 0, result.output
    assert "visual autoregressive" in result.output and "1² 2² 3²" in result.output and "680 tokens" in result.output


# ----------------------------------------------------------------------------- image
def test_image_writes_a_marked_png_and_reports_time(tmp_path, converted):
    out = tmp_path / "img.png"
    result = run("image", str(converted), "--class", "3", "--seed", "0", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "scale 10/10" in result.output and "transformer" in result.output and "decoder" in result.output
    with Image.open(out) as image:
        assert image.size == (32, 32) and image.mode == "RGB" and image.text["Software"] == "edgegen"
        first = np.asarray(image)
    assert run("image", str(converted), "--class", "3", "--seed", "0", "-o", str(out)).exit_code == 2
    assert run("image", str(converted), "--class", "3", "--seed", "0", "-o", str(out), "--force").exit_code == 0
    with Image.open(out) as image:
        np.testing.assert_array_equal(np.asarray(image), first)  # same seed, same image


def test_several_images_become_numbered_files_or_one_grid(tmp_path, converted):
    result = run("image", str(converted), "-c", "1", "-c", "2", "-n", "2", "--seed", "1", "-o", str(tmp_path / "d.png"),
                 "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.splitlines()[-1])
    assert report["classes"] == [1, 1, 2, 2] and len(report["files"]) == 4
    assert [p.name for p in sorted(tmp_path.glob("d-*.png"))] == ["d-1.png", "d-2.png", "d-3.png", "d-4.png"]
    assert report["timing"]["transformer_s"] > 0 and len(report["timing"]["scales_s"]) == 10
    result = run("image", str(converted), "-c", "1", "-c", "2", "-c", "3", "-n", "4", "--grid",
                 "-o", str(tmp_path / "grid.png"))
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "grid.png") as image:  # a row of 4 per class
        assert image.size == (4 * 32 + 3 * 2, 3 * 32 + 2 * 2)


def test_force_never_replaces_a_file_edgegen_did_not_write(tmp_path, converted):
    out = tmp_path / "mine.png"
    Image.new("RGB", (4, 4)).save(out)
    one_line_error(run("image", str(converted), "-c", "1", "-o", str(out), "--force"), "did not write")
    with Image.open(out) as image:
        assert image.size == (4, 4)


@pytest.mark.parametrize("args,words", [
    (("-c", "10"), ("class 10",)), (("-c", "dog"), ("unknown class",)), (("-n", "0"), ("-n",)),
    (("--cfg", "-1"), ("--cfg",)), (("--top-p", "2"), ("--top-p",)),
])
def test_bad_image_options_are_one_line_errors(tmp_path, converted, args, words):
    one_line_error(run("image", str(converted), "-o", str(tmp_path / "x.png"), *args), *words)
    assert not (tmp_path / "x.png").exists()


def test_image_refuses_a_language_model(tmp_path, converted):
    src = converted / "edgegen.json"
    manifest = json.loads(src.read_text())
    assert manifest["family"] == "var"
    one_line_error(run("image", str(tmp_path / "nothing"), "-o", str(tmp_path / "x.png")))


@pytest.mark.parametrize("command", [["generate", "-p", "hi"], ["complete", "-p", "hi"], ["bench"], ["chat"],
                                     ["perplexity", "--text", "TEXT"]])
def test_text_commands_refuse_an_image_model(tmp_path, converted, command):
    text = tmp_path / "t.txt"
    text.write_text("some words to score")
    args = [str(text) if a == "TEXT" else a for a in command]
    one_line_error(CliRunner().invoke(main, [args[0], str(converted), *args[1:]], input="hello\n"),
                   "image model", "edgegen image")


def test_python_api_returns_arrays_and_pil_images(converted):
    import edgegen

    model = edgegen.load(converted)
    result = model.generate([0, 9], n=2, cfg=1.0, seed=3)
    assert result.images.shape == (4, 32, 32, 3) and result.images.dtype == np.uint8
    assert result.class_ids == [0, 0, 9, 9]
    assert [im.size for im in result.pil()] == [(32, 32)] * 4
    assert result.stats()["decoder_s"] > 0
