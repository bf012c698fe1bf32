"""Bounded memory: big or endless inputs stream or get one line. The commands run in subprocesses
under an address-space limit (RLIMIT_AS), so a regression ends in a MemoryError or a tokenizer
panic here instead of waking the machine's OOM killer."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import edgegen
from edgegen.cli import main
from edgegen.core import memory
from edgegen.core.data import HELDOUT, bundled_text
from edgegen.decoding import ngram
from edgegen.decoding.perplexity import perplexity
from edgegen.images import is_edgegen_png

LIMIT = 1536 * 2**20  # the old code needed > 7 GB for `ngram build` of 100 MB and panicked on 400 MB


def run_limited(*args: str, limit: int = LIMIT, timeout: float = 300) -> subprocess.CompletedProcess:
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return subprocess.run([sys.executable, "-m", "edgegen", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=cap)


def assert_one_line(result, *words: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    code = result.exit_code if hasattr(result, "exit_code") else result.returncode
    assert code == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("edgegen: error:"), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture(scope="module")
def big_text(tmp_path_factory) -> Path:
    """60 MB of real text: read whole and tokenized at once, it does not fit under LIMIT."""
    path = tmp_path_factory.mktemp("big") / "big.txt"
    block = (bundled_text(HELDOUT) + "\n") * 64
    with path.open("w", encoding="utf-8") as f:
        while f.tell() < 60 * 2**20:
            f.write(block)
    return path


@pytest.mark.parametrize("source", ["/dev/zero", "big"])
def test_perplexity_reads_only_what_it_scores(source, big_text):
    result = run_limited("perplexity", "--text", big_text if source == "big" else source, "--max-tokens", "100",
                         "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tokens"] == 99


def test_streamed_perplexity_equals_the_whole_text_figure(tmp_path):
    text = bundled_text(HELDOUT)
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    cli = CliRunner().invoke(main, ["perplexity", "--text", str(path), "--context", "48", "--max-tokens", "300",
                                    "--json"])
    assert cli.exit_code == 0, cli.output
    model = edgegen.load("tiny-chat")
    ids = [i for i in model.tokenizer.encode(text) if i < model.backend.vocab_size][:300]
    whole = perplexity(model.backend, ids, context=48)
    streamed = json.loads(cli.stdout)
    assert streamed["tokens"] == whole.tokens == 299 - 300 // 48  # a window's first token is given
    assert streamed["perplexity"] == round(whole.perplexity, 4)
    assert streamed["stderr"] == round(whole.stderr, 4)


def test_perplexity_statistics_equal_numpys():
    """The running mean and variance (no per-token array) give numpy's figures."""
    from edgegen.decoding.perplexity import _Running

    values = np.random.default_rng(0).gamma(2.0, 1.5, size=5000)
    stats = _Running()
    for v in values:
        stats.add(float(v))
    result = stats.result()
    assert result.mean_nll == pytest.approx(values.mean(), rel=1e-12)
    se = values.std(ddof=1) / np.sqrt(len(values))
    assert result.stderr == pytest.approx(np.exp(values.mean()) * se, rel=1e-9)


def test_ngram_build_refuses_an_endless_input(tmp_path):
    result = run_limited("ngram", "build", "--text", "/dev/zero", "-o", tmp_path / "store")
    assert_one_line(result, "/dev/zero", "not a regular file")
    assert not (tmp_path / "store").exists()


def test_ngram_build_streams_a_corpus_into_the_same_store(tmp_path, big_text):
    """8 MB (two chunks of the tokenizer's stream, several flushes of the counters) under the
    limit, and the store equals the one counted from the whole text in memory."""
    corpus = tmp_path / "corpus.txt"
    with big_text.open("rb") as f:
        corpus.write_bytes(f.read(8 * 2**20))
    result = run_limited("ngram", "build", "--text", corpus, "-o", tmp_path / "streamed")
    assert result.returncode == 0, result.stderr
    model = edgegen.load("tiny-chat")
    ids = np.asarray(model.tokenizer.encode(corpus.read_text(encoding="utf-8"), add_special_tokens=False))
    (tmp_path / "whole").mkdir()
    ngram.build([ids], tmp_path / "whole", vocab_size=model.backend.vocab_size, top=16,
                min_count={2: 1, 3: 2, 4: 2, 5: 2, 6: 2},
                tokenizer_fingerprint=ngram.fingerprint(model.tokenizer.vocabulary()), sources=[corpus.name])
    for path in sorted((tmp_path / "whole").iterdir()):
        assert path.read_bytes() == (tmp_path / "streamed" / path.name).read_bytes(), path.name


def test_ngram_counter_merges_like_one_count():
    """Buffers merged many times over (a flush every 7 pairs) count what one pass counts."""
    rng = np.random.default_rng(1)
    seqs = [rng.integers(0, 9, size=n) for n in (50, 3, 80, 31)]
    for n in ngram.ORDERS:
        small = ngram.OrderCounter(n, 9, flush_pairs=7)
        for s in seqs:
            small.add(s)
        once = ngram.count_order(seqs, n, 9, top=3, min_count=2)
        for part, array in small.arrays(top=3, min_count=2).items():
            np.testing.assert_array_equal(array, once[part])


def test_ngram_blocks_of_a_document_count_as_one_run(tmp_path):
    rng = np.random.default_rng(2)
    doc = rng.integers(0, 11, size=120)
    kwargs = dict(vocab_size=11, tokenizer_fingerprint="t", sources=["x"], top=100, min_count={n: 1 for n in ngram.ORDERS})
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    ngram.build([doc], tmp_path / "a", **kwargs)
    ngram.build([iter([doc[:2], doc[2:3], doc[3:50], doc[50:]])], tmp_path / "b", **kwargs)
    for path in sorted((tmp_path / "a").iterdir()):
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes(), path.name


def test_image_runs_in_batches_under_the_limit(tmp_path):
    result = run_limited("image", "--class", "1", "-n", "40", "--batch-size", "8", "--seed", "0", "-o",
                         tmp_path / "d.png")
    assert result.returncode == 0, result.stderr
    assert all(is_edgegen_png(tmp_path / f"d-{i}.png") for i in range(1, 41))
    assert "in batches of 8" in result.stderr


def test_seeded_images_do_not_depend_on_the_batch_size():
    model = edgegen.load("tiny-var")
    whole = model.generate([2, 7], n=5, seed=3, batch_size=10)
    for size in (1, 3):
        np.testing.assert_array_equal(model.generate([2, 7], n=5, seed=3, batch_size=size).images, whole.images)
    batches = list(model.generate_batches([2, 7], n=5, seed=3, batch_size=4))
    assert [len(b.class_ids) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b.images for b in batches]), whole.images)
    assert whole.class_ids == [2] * 5 + [7] * 5 and len(whole.timing.scales) == len(model.model.patch_nums)


def interrupted_image_run(n: int, folder: Path, files: int, preexec_fn=None) -> tuple[int, str]:
    """`edgegen image -c 4 -n N -o folder/x.png` in batches of 4, Ctrl-C once `files` PNGs are
    there: (exit code, stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "edgegen", "image", "-c", "4", "-n", str(n), "--batch-size", "4",
                             "-o", str(folder / "x.png")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=preexec_fn)
    try:
        deadline = time.monotonic() + 120
        while len(list(folder.glob("x-*.png"))) < files and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return proc.returncode, err


def test_an_interrupted_image_run_keeps_its_finished_files(tmp_path):
    code, err = interrupted_image_run(5000, tmp_path, 8)
    assert code == 130, err
    files = sorted(tmp_path.iterdir())
    assert len(files) >= 8 and all(p.suffix == ".png" and is_edgegen_png(p) for p in files), files
    numbers = sorted(int(p.stem.split("-")[1]) for p in files)
    assert numbers == list(range(1, len(files) + 1))  # in order, none missing, no temporary file left


def test_a_billion_images_start_at_once_in_bounded_memory(tmp_path):
    """-n 10⁹ under the address-space limit: the first files come as soon as -n 1 would (nothing
    is made per image beforehand: the paths, their checks and the class list used to be, 2 GB
    and 20 s for 10⁹ before the first image); Ctrl-C keeps them."""
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))

    code, err = interrupted_image_run(10**9, tmp_path, 4, preexec_fn=cap)
    assert code == 130, err
    assert len(list(tmp_path.glob("x-*.png"))) >= 4


def test_numbered_images_that_exist_are_refused_before_any_work(tmp_path):
    (tmp_path / "x-3.png").write_text("not ours")
    (tmp_path / "x-9.png").write_text("past -n: not in the way")
    result = CliRunner().invoke(main, ["image", "-c", "1", "-n", "5", "-o", str(tmp_path / "x.png")])
    assert_one_line(result, "x-3.png already exists")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x-3.png", "x-9.png"]


def test_numbered_images_beside_an_image_of_the_same_name(tmp_path):
    """docs/images.md's walkthrough: one image to three.png, then -n 2 to the same -o, which writes
    three-1.png and three-2.png and not three.png (so three.png is no obstacle)."""
    one = CliRunner().invoke(main, ["image", "-c", "3", "-o", str(tmp_path / "three.png")])
    assert one.exit_code == 0, one.output
    more = CliRunner().invoke(main, ["image", "-c", "3", "-n", "2", "--seed", "0", "-o", str(tmp_path / "three.png")])
    assert more.exit_code == 0, more.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["three-1.png", "three-2.png", "three.png"]


@pytest.fixture
def little_memory(monkeypatch):
    """As if the system had 4 MiB available."""
    monkeypatch.setattr(memory, "_system_available", lambda: 4 * 2**20)


def test_a_batch_that_cannot_fit_is_one_line(little_memory, tmp_path):
    result = CliRunner().invoke(main, ["image", "-c", "1", "-o", str(tmp_path / "a.png")])
    assert_one_line(result, "a batch of 1 image(s)", "MiB of memory is available")
    assert list(tmp_path.iterdir()) == []


def test_a_grid_that_cannot_fit_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(memory, "_system_available", lambda: 40 * 2**20)
    result = CliRunner().invoke(main, ["image", "-c", "1", "-n", "20000", "--grid", "-o", str(tmp_path / "g.png")])
    assert_one_line(result, "a grid of 1×20000 images", "drop --grid")


def test_a_kv_cache_at_context_that_cannot_fit_is_one_line(little_memory):
    result = CliRunner().invoke(main, ["perplexity", "--max-tokens", "10"])
    assert_one_line(result, "a KV cache of", "--context")


def test_generating_more_images_than_fit_at_once_points_at_batches(monkeypatch):
    model = edgegen.load("tiny-var")
    monkeypatch.setattr(memory, "_system_available", lambda: 300 * 2**20)
    with pytest.raises(memory.OutOfMemory, match="generate_batches"):
        model.generate(1, n=100_000)


def test_a_memory_error_is_one_line(monkeypatch):
    import edgegen.decoding.perplexity as module

    def explode(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(module, "perplexity", explode)
    result = CliRunner().invoke(main, ["perplexity", "--max-tokens", "10"])
    assert_one_line(result, "out of memory")
    assert "Traceback" not in result.output


def test_available_memory_follows_an_address_space_limit():
    code = ("import resource; from edgegen.core import memory; "
            "resource.setrlimit(resource.RLIMIT_AS, (memory._virtual_size() + 300 * 2**20,) * 2); "
            "print(memory.available_bytes())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert 250 * 2**20 < int(out.stdout) <= 300 * 2**20


def test_a_bench_grid_whose_cache_cannot_fit_is_one_line(little_memory):
    result = CliRunner().invoke(main, ["bench", "--prompt-tokens", "512", "--gen-tokens", "500"])
    assert_one_line(result, "a KV cache of 1,012 tokens", "--prompt-tokens")
