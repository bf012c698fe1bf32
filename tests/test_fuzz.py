"""Fuzzing the edges with Hypothesis: option values from wide ranges and odd strings, and model
folders with bytes flipped or cut in every file. Every case ends in success or a one-line error
with exit code 2 (CLI) / an `EdgegenError` (API): no traceback, no hang, no partial output, and
nothing outside OUT deleted.

The CI profile is seeded and bounded (a few minutes); `EDGEGEN_FUZZ=slow pytest tests/test_fuzz.py`
runs many more examples by hand.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edgegen
from edgegen.cli import main
from edgegen.core.errors import EdgegenError
from edgegen.models import BUNDLED

settings.register_profile("ci", max_examples=25, derandomize=True, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck))
settings.register_profile("slow", max_examples=400, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("EDGEGEN_FUZZ", "ci"))

ODD_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "\x00", "a\udcffb", "\ud800", "<|im_end|>", "<s></s>", "💥" * 30, "\n" * 50,
                     "-1", "nan", "inf", "1e309", "--help", "/reset"]),
)
NUMBER_TEXT = st.one_of(
    st.integers(-10**30, 10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    ODD_TEXT,
)


def assert_clean_cli(result) -> None:
    """Success, or one line on stderr starting `edgegen: error:` with exit code 2."""
    if result.exit_code == 0:
        return
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.exit_code, result.stderr, repr(result.exception))
    assert len(lines) == 1 and lines[0].startswith("edgegen: error:"), result.stderr
    assert "Traceback" not in result.stderr


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


# ------------------------------------------------------------------ API arguments

@pytest.fixture(scope="module")
def api_model(converted):
    return edgegen.load(converted("qwen2", "onnx"))


SAMPLING = st.fixed_dictionaries({}, optional={
    "temperature": st.floats(allow_nan=True, allow_infinity=True),
    "top_p": st.floats(allow_nan=True, allow_infinity=True),
    "top_k": st.integers(-10**20, 10**20),
    "min_p": st.floats(allow_nan=True, allow_infinity=True),
    "repetition_penalty": st.floats(allow_nan=True, allow_infinity=True),
    "seed": st.integers(-10**30, 10**30),
    "max_tokens": st.integers(-10**20, 10**20),
    "stop": st.lists(ODD_TEXT, max_size=3),
})
PROMPTS = st.one_of(ODD_TEXT, st.lists(st.integers(-10**20, 10**20), max_size=8),
                    st.lists(st.integers(0, 383), min_size=1, max_size=8))


@given(prompt=PROMPTS, kwargs=SAMPLING)
def test_api_generate_ends_in_success_or_an_edgegen_error(api_model, prompt, kwargs):
    kwargs = {"max_tokens": 4, **kwargs}
    if isinstance(kwargs.get("max_tokens"), int) and kwargs["max_tokens"] > 4:
        kwargs["max_tokens"] = 4  # long generations prove nothing more, and cost time
    try:
        result = api_model.generate(prompt, **kwargs)
    except EdgegenError:
        return
    assert isinstance(result.text, str) and len(result.token_ids) <= 4


@given(ids=st.lists(st.integers(-10**20, 10**20), max_size=6))
def test_api_logits_validate_ids(api_model, ids):
    try:
        logits = api_model.logits(ids)
    except EdgegenError:
        return
    assert logits.shape == (len(ids), 384) and all(0 <= i < 384 for i in ids)


# ------------------------------------------------------------------ CLI options

GENERATE_OPTIONS = ["--max-tokens", "--temp", "--top-p", "--top-k", "--min-p", "--repetition-penalty", "--seed",
                    "--stop", "--provider", "--device", "--runtime"]


@given(prompt=ODD_TEXT, options=st.lists(st.tuples(st.sampled_from(GENERATE_OPTIONS), NUMBER_TEXT), max_size=4),
       flags=st.lists(st.sampled_from(["--raw", "--json"]), max_size=2, unique=True))
def test_cli_generate_options(converted, prompt, options, flags):
    args = ["generate", converted("qwen2", "onnx"), "-p", prompt, "-m", "3", *flags]
    for name, value in options:
        if name == "--max-tokens" and value.isdigit() and int(value) > 4:
            value = "4"
        args += [name, value]
    assert_clean_cli(invoke(*args))


COMMAND_OPTIONS = {
    "complete": ["--drafts", "--ngram", "--ngram-weight", "--max-tokens", "--kv-bits"],
    "perplexity": ["--kv-bits", "--kv-group-size", "--context", "--max-tokens", "--text"],
    "generate": ["--draft", "--num-draft", "--max-draft", "--kv-bits", "--block-size", "--threshold", "--rule",
                 "--steps", "--dllm-cache"],
}


@given(command=st.sampled_from(sorted(COMMAND_OPTIONS)), data=st.data())
def test_cli_strategy_options(converted, command, data):
    """The options of the decoding strategies, with odd values, on an autoregressive model."""
    names = COMMAND_OPTIONS[command]
    options = data.draw(st.lists(st.tuples(st.sampled_from(names), NUMBER_TEXT), max_size=3))
    args = [command, converted("qwen2", "onnx")] + (["-p", "The number"] if command != "perplexity" else [])
    args += ["--max-tokens", "3"]
    for name, value in options:
        if name in ("--max-tokens", "--drafts", "--num-draft", "--max-draft", "--steps", "--block-size") and \
                value.isdigit() and int(value) > 4:
            value = "4"
        args += [name, value]
    assert_clean_cli(invoke(*args))


CONVERT_OPTIONS = ["--runtime", "--dtype", "--quant", "--group-size", "--revision"]


@given(options=st.lists(st.tuples(st.sampled_from(CONVERT_OPTIONS),
                                  st.one_of(NUMBER_TEXT, st.sampled_from(["onnx", "mlx", "fp16", "q4", "q8", "64"]))),
                        max_size=3),
       target=st.sampled_from(["new", "file", "user-dir", "empty-dir", "src", "parent-of-src", "inside-src"]),
       force=st.booleans())
def test_cli_convert_never_touches_what_it_did_not_write(checkpoints, tmp_path_factory, options, target, force):
    root = tmp_path_factory.mktemp("fuzz-convert")
    src = root / "src"
    shutil.copytree(checkpoints("qwen2")[0], src)
    (root / "precious.txt").write_text("keep me")
    out = {"new": root / "out", "file": root / "afile", "user-dir": root / "user", "empty-dir": root / "empty",
           "src": src, "parent-of-src": root, "inside-src": src / "sub"}[target]
    (root / "afile").write_text("keep me too")
    (root / "user").mkdir()
    (root / "user" / "notes.txt").write_text("mine")
    (root / "empty").mkdir()
    before = snapshot(root)
    args = ["convert", src, "-o", out] + [x for pair in options for x in pair] + (["--force"] if force else [])
    result = invoke(*args)
    assert_clean_cli(result)
    after = snapshot(root)
    kept = {p: h for p, h in before.items() if not p.startswith(out.relative_to(root).as_posix() + "/")
            or out in (root, src)}
    if result.exit_code == 0:
        assert target in ("new", "empty-dir"), f"convert wrote into {target}"
        kept = {p: h for p, h in before.items() if not (root / p).is_relative_to(out)}
    for path, digest in kept.items():
        assert after.get(path) == digest, f"{path} was changed or deleted"
    litter = [p for p in after if Path(p).name.startswith(".") and p not in before]
    assert not litter, litter


def snapshot(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): hash(p.read_bytes()) for p in root.rglob("*") if p.is_file()}


# ------------------------------------------------------------------ corrupted folders

CORRUPTIONS = st.tuples(st.sampled_from(["flip", "truncate", "empty"]), st.floats(0, 1), st.integers(1, 64))


def corrupt(path: Path, kind: str, where: float, count: int) -> None:
    data = bytearray(path.read_bytes())
    if kind == "empty" or not data:
        path.write_bytes(b"")
        return
    at = min(int(where * len(data)), len(data) - 1)
    if kind == "truncate":
        path.write_bytes(bytes(data[:at]))
        return
    for i in range(at, min(at + count, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def converted_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file())


@pytest.mark.parametrize("kind", ["onnx", "onnx-q4", "mlx"])
def test_corrupted_converted_folders(converted, tmp_path_factory, kind):
    runtime, quant = {"onnx": ("onnx", "none"), "onnx-q4": ("onnx", "q4"), "mlx": ("mlx", "none")}[kind]
    pristine = converted("qwen2", runtime, quant)

    @given(name=st.sampled_from(converted_files(pristine)), how=CORRUPTIONS)
    def check(name, how):
        folder = tmp_path_factory.mktemp("fuzz-model") / "m"
        shutil.copytree(pristine, folder)
        corrupt(folder / name, *how)
        assert_clean_cli(invoke("generate", folder, "-p", "The number", "-m", "2"))

    check()


def test_corrupted_source_folders(checkpoints, tmp_path_factory):
    pristine = checkpoints("qwen2")[0]

    @given(name=st.sampled_from(converted_files(pristine)), how=CORRUPTIONS,
           runtime=st.sampled_from(["onnx", "mlx"]))
    def check(name, how, runtime):
        root = tmp_path_factory.mktemp("fuzz-src")
        shutil.copytree(pristine, root / "src")
        corrupt(root / "src" / name, *how)
        result = invoke("convert", root / "src", "-o", root / "out", "--runtime", runtime)
        assert_clean_cli(result)
        leftovers = sorted(p.name for p in root.iterdir() if p.name != "src")
        assert leftovers == (["out"] if result.exit_code == 0 else []), leftovers

    check()


def test_corrupted_sentencepiece_tokenizers(tmp_path_factory):
    """A source whose only tokenizer is a SentencePiece `tokenizer.model` (tiny-draft without its
    tokenizer.json): a damaged model file fails at convert or at generate, in one line."""
    pristine = tmp_path_factory.mktemp("spm") / "src"
    shutil.copytree(BUNDLED / "tiny-draft", pristine, ignore=shutil.ignore_patterns("tokenizer.json", "README.md"))

    @settings(max_examples=min(settings().max_examples, 12))
    @given(how=CORRUPTIONS)
    def check(how):
        root = tmp_path_factory.mktemp("fuzz-spm")
        shutil.copytree(pristine, root / "src")
        corrupt(root / "src" / "tokenizer.model", *how)
        result = invoke("convert", root / "src", "-o", root / "out", "--runtime", "onnx")
        assert_clean_cli(result)
        if result.exit_code == 0:
            assert_clean_cli(invoke("generate", root / "out", "-p", "The json module", "-m", "2"))

    check()


def test_wide_numbers_are_not_nan_sensitive():
    assert math.isnan(float("nan"))  # the strategies above rely on NaN reaching the options


# ------------------------------------------------------------------ endless and huge inputs

ENDLESS = {  # name: (arguments, standard input, ends well)
    "perplexity of /dev/zero": (["perplexity", "--text", "/dev/zero", "--max-tokens", "20"], None, True),
    "perplexity of an 8 GB file": (["perplexity", "--text", "{huge}", "--max-tokens", "20"], None, True),
    "ngram build of /dev/zero": (["ngram", "build", "--text", "/dev/zero", "-o", "{out}"], None, False),
    "generate from /dev/zero": (["generate", "-p", "-", "-m", "2"], "/dev/zero", False),
    "complete from /dev/zero": (["complete", "-p", "-", "-m", "2"], "/dev/zero", False),
    "perplexity of an 8 GB line of JSON": (["ngram", "build", "--text", "{huge_jsonl}", "-o", "{out}"], None, False),
}


@pytest.mark.parametrize("case", sorted(ENDLESS))
def test_endless_and_huge_inputs_stream_or_get_one_line(case, tmp_path):
    """Under a 1.5 GB address-space limit: success, or one line with exit code 2, within the timeout."""
    import resource
    import subprocess
    import sys

    args, stdin, ends_well = ENDLESS[case]
    for name in ("huge.txt", "huge.jsonl"):  # sparse: 8 GB of NUL bytes that take no disk
        with (tmp_path / name).open("wb") as f:
            f.truncate(8 * 2**30)
    names = {"huge": tmp_path / "huge.txt", "huge_jsonl": tmp_path / "huge.jsonl", "out": tmp_path / "out"}
    args = [a.format(**names) for a in args]
    limit = 1536 * 2**20
    with open(stdin or os.devnull, "rb") as source:
        result = subprocess.run([sys.executable, "-m", "edgegen", *args], stdin=source, capture_output=True,
                                text=True, timeout=240,
                                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if ends_well:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("edgegen: error:"), result.stderr
    assert not (tmp_path / "out").exists()
