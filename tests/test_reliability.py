"""The reliability table of issue 12, one test per row, plus threads sharing one Model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading

import pytest

import edgegen
from conftest import RUNTIMES
from edgegen.core.errors import ConfigError, EdgegenError
from test_cli_errors import assert_one_line_error, run


def tree(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_force_never_replaces_a_users_folder(checkpoints, tmp_path):
    user = tmp_path / "d"
    user.mkdir()
    (user / "notes.txt").write_text("precious")
    result = run("convert", str(checkpoints("llama")[0]), "-o", str(user), "--force")
    assert_one_line_error(result, "did not write")
    assert (user / "notes.txt").read_text() == "precious" and tree(user) == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_force_never_replaces_a_file(checkpoints, tmp_path):
    target = tmp_path / "some_file"
    target.write_text("mine")
    assert_one_line_error(run("convert", str(checkpoints("llama")[0]), "-o", str(target), "--force"), "file")
    assert target.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["some_file"]


@pytest.mark.parametrize("where", ["same", "inside", "parent"])
def test_output_may_not_overlap_the_source(checkpoints, tmp_path, where):
    src = tmp_path / "ckpt"
    shutil.copytree(checkpoints("llama")[0], src)
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    out = {"same": src, "inside": src / "converted", "parent": tmp_path}[where]
    assert_one_line_error(run("convert", str(src), "-o", str(out), "--force"), "overlaps")
    assert {p: p.read_bytes() for p in src.rglob("*") if p.is_file()} == before


def test_force_replaces_a_previous_output_and_leaves_no_litter(checkpoints, tmp_path):
    src, out = checkpoints("qwen2")[0], tmp_path / "out"
    assert run("convert", str(src), "-o", str(out)).returncode == 0
    (out / "stale.txt").write_text("from an older edgegen")
    result = run("convert", str(src), "-o", str(out), "--force", "--quant", "q8")
    assert result.returncode == 0, result.stderr
    assert not (out / "stale.txt").exists()
    assert json.loads((out / "edgegen.json").read_text())["quantization"]["method"] == "q8"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_force_onto_an_empty_folder(checkpoints, tmp_path):
    (tmp_path / "empty").mkdir()
    assert run("convert", str(checkpoints("qwen2")[0]), "-o", str(tmp_path / "empty"), "--force").returncode == 0
    assert (tmp_path / "empty" / "edgegen.json").is_file()


def test_failed_replacement_keeps_the_old_output(checkpoints, tmp_path, monkeypatch):
    from edgegen.converters import convert as convert_module

    src, out = checkpoints("qwen2")[0], tmp_path / "out"
    convert_module.convert(str(src), out)
    before = tree(out)
    monkeypatch.setattr(convert_module, "_manifest", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        convert_module.convert(str(src), out, force=True)
    assert tree(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_non_utf8_prompt_is_decoded_with_replacement(converted):
    result = subprocess.run([sys.executable, "-m", "edgegen", "generate", str(converted("qwen2", "onnx")),
                             "-p", b"a\xffb", "-m", "3", "--raw"], capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert b"Traceback" not in result.stderr


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("ids", [[10**6], [-1], [3, 384], [], ["7"], [1.5]])
def test_token_ids_are_checked_at_the_api(converted, runtime, ids):
    model = edgegen.load(converted("qwen2", runtime))
    with pytest.raises(ConfigError):
        model.logits(ids)
    with pytest.raises(ConfigError):
        model.generate(ids, max_tokens=2)


def test_prompt_ids_out_of_range_on_the_command_line_are_one_line(converted, tmp_path):
    code = ("import edgegen, sys\n"
            "from edgegen.core.errors import EdgegenError\n"
            f"m = edgegen.load({str(converted('qwen2', 'onnx'))!r})\n"
            "try:\n    m.logits([10**6])\nexcept EdgegenError as e:\n    print('error:', e)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "outside the vocabulary" in result.stdout and result.stderr == ""


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_threads_sharing_one_model_get_sequential_results(converted, runtime):
    model = edgegen.load(converted("llama", runtime))
    prompts = [[5 + i, 17, 42 + 3 * i, 99] for i in range(4)]
    expected = {i: model.generate(p, max_tokens=8, ignore_eos=True).token_ids for i, p in enumerate(prompts)}
    results: dict[tuple[int, int], list[int]] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for j in range(5):
                results[i, j] = model.generate(prompts[i], max_tokens=8, ignore_eos=True).token_ids
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert all(results[i, j] == expected[i] for i in range(4) for j in range(5))


def test_an_unfinished_stream_in_the_same_thread_is_a_clear_error(converted):
    model = edgegen.load(converted("qwen2", "onnx"))
    stream = model.stream("The number", max_tokens=8, ignore_eos=True)
    next(stream)
    with pytest.raises(EdgegenError, match="already generating"):
        model.generate("The", max_tokens=2)
    stream.close()
    assert model.generate("The", max_tokens=2, ignore_eos=True).token_ids


def test_sigterm_during_convert_leaves_nothing(checkpoints, tmp_path):
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "edgegen", "convert", str(checkpoints("llama")[0]), "-o",
                             str(tmp_path / "out"), "--quant", "q4"], stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not any(p.name.startswith(".out.") for p in tmp_path.iterdir()):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) in (0, 143)  # finished first, or stopped cleanly
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers in ([], ["out"]), leftovers


def test_sigterm_is_ours_only_while_a_command_runs():
    """After a command (and during the interpreter's exit that follows it) SIGTERM is handled as
    before it: a launcher's SIGTERM to a rank that is already exiting must not print a traceback
    from an atexit callback (seen with mlx.launch when the other rank was killed)."""
    import signal

    from click.testing import CliRunner

    from edgegen.cli import main

    before = signal.getsignal(signal.SIGTERM)
    assert CliRunner().invoke(main, ["--version"]).exit_code == 0
    assert signal.getsignal(signal.SIGTERM) is before
    assert CliRunner().invoke(main, ["generate"]).exit_code == 2  # a failure path too
    assert signal.getsignal(signal.SIGTERM) is before


def test_an_output_under_a_file_or_an_unwritable_folder_is_one_line_before_any_work(checkpoints, tmp_path):
    (tmp_path / "afile").write_text("x")
    assert_one_line_error(run("convert", str(checkpoints("llama")[0]), "-o", str(tmp_path / "afile" / "sub")),
                          "is a file, not a folder")
    assert_one_line_error(run("image", "-c", "3", "-o", str(tmp_path / "afile" / "x.png")), "is a file, not a folder")
    assert_one_line_error(run("ngram", "build", "--text", str(tmp_path / "afile"), "-o",
                              str(tmp_path / "afile" / "store")), "is a file, not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_what_the_system_refuses_is_one_line():
    """An OSError from a write (here: a full disk, /dev/full) is a line, not a traceback."""
    assert run("info", "tiny-chat").returncode == 0  # converted first: no "converted ..." line below
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "edgegen", "generate", "-p", "hi", "-m", "3"], stdout=full,
                                stderr=subprocess.PIPE, text=True, timeout=120)
    assert_one_line_error(result, "No space left on device")


def test_a_failed_convert_removes_the_folders_it_made(checkpoints, tmp_path):
    src = tmp_path / "ckpt"
    shutil.copytree(checkpoints("llama")[0], src)
    (src / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes()[: 5000])
    assert_one_line_error(run("convert", str(src), "-o", str(tmp_path / "a" / "b" / "out")), "model.safetensors")
    assert not (tmp_path / "a").exists()


def test_bare_edgegen_shows_its_help_as_written():
    result = run()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("Usage: edgegen") and "\nCommands:\n" in result.stderr


def test_a_source_edited_in_place_is_converted_again(tmp_path, monkeypatch, capsys):
    """The cache's stamp of a local source: names, sizes and modification times (a retrained or
    edited file keeps its size; the stamp once held sizes only, and the old conversion was served)."""
    import os

    from edgegen.models import BUNDLED, locate

    monkeypatch.setenv("EDGEGEN_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "src"
    shutil.copytree(BUNDLED / "tiny-draft", src)
    locate(str(src))
    assert "converted" in capsys.readouterr().err
    locate(str(src))
    assert "converted" not in capsys.readouterr().err
    config = src / "config.json"
    config.write_text(config.read_text().replace('"rms_norm_eps": 1e-05', '"rms_norm_eps": 2e-05'))
    stat = config.stat()
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # (a coarse clock could give the same time)
    assert config.stat().st_size == stat.st_size
    out = locate(str(src))
    assert "converted" in capsys.readouterr().err
    assert json.loads((out / "edgegen.json").read_text())["config"]["rms_norm_eps"] == 2e-05


def test_sigterm_inside_an_import_still_exits_quietly(monkeypatch):
    """SIGTERM's SystemExit raised inside a module's import comes out as ImportError (onnxruntime's
    lazy import during convert): still exit 143, no traceback."""
    from click.testing import CliRunner

    from edgegen.cli import _app, main

    def interrupted(*_args, **_kwargs):
        _app._TERMINATED.set()
        raise ImportError("initialization failed")

    monkeypatch.setattr("edgegen.models.locate", interrupted)
    try:
        result = CliRunner().invoke(main, ["info", "tiny-chat"])
    finally:
        _app._TERMINATED.clear()
    assert result.exit_code == 143 and "Traceback" not in result.output, result.output
