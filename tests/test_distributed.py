"""Distributed MLX: two ranks on 127.0.0.1 through `mlx.launch --backend ring -n 2`, in tensor and
pipeline mode: every strategy gives rank 0 the tokens one process gives, each rank holds its share
of the weights, a rank that dies ends the run everywhere with one line, and the CLI, the server
and the refusals behave. Every launch is bounded by a timeout and stops itself."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

mx = pytest.importorskip("mlx.core")
LAUNCH = shutil.which("mlx.launch", path=str(Path(sys.executable).parent)) or shutil.which("mlx.launch")
pytestmark = pytest.mark.skipif(LAUNCH is None or not mx.distributed.is_available(),
                                reason="mlx.launch and mlx.distributed are needed")
DRIVER = Path(__file__).with_name("distributed_driver.py")
TIMEOUT = 240  # seconds for one launch, as a bound: a hang fails the test instead of the suite


def our_lines(stderr: str) -> list[str]:
    """edgegen's error lines in a launcher's relayed stderr, where mlx.launch's own coloured
    "[WARN] Node … exited" may share a line's start with ours."""
    return re.findall(r"edgegen: error: [^\n]*", stderr)


def fresh_port() -> list[str]:
    """A starting port of its own for each launch: back-to-back launches on the ring's default
    ports can meet the last one's sockets still closing."""
    import random

    return ["--starting-port", str(random.randrange(20000, 60000, 16))]


def launch(*args: str, timeout: float = TIMEOUT, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [LAUNCH, "--backend", "ring", "-n", "2", *fresh_port(), "--", sys.executable, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "EDGEGEN_DISTRIBUTED_TIMEOUT": "20", **(env or {})})


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("dist") / "one.json"
    subprocess.run([sys.executable, str(DRIVER), str(out)], check=True, timeout=TIMEOUT, capture_output=True)
    return json.loads(out.read_text())


def weight_bytes(model: str) -> tuple[int, int]:
    """(all weights, the replicated ones: embedding and norms) of the converted MLX folder."""
    from edgegen.models import locate

    tensors = mx.load(str(locate(model, "mlx", "none") / "model.safetensors"))
    total = sum(a.nbytes for a in tensors.values())
    layers = sum(a.nbytes for name, a in tensors.items() if ".layers." in name and "layernorm" not in name
                 and "_norm." not in name)
    return total, total - layers


@pytest.mark.parametrize("mode", ["tensor", "pipeline"])
def test_every_strategy_gives_the_tokens_of_one_process(mode, one_process, tmp_path):
    out = tmp_path / f"{mode}.json"
    result = launch(str(DRIVER), str(out), mode)
    assert result.returncode == 0, result.stderr[-2000:]
    ranks = json.loads(out.read_text())
    for strategy, tokens in one_process.items():
        assert ranks[strategy] == tokens, strategy
    info = ranks["distributed"]
    assert info["size"] == 2 and info["mode"] == mode
    total, replicated = weight_bytes("tiny-chat")
    held = [round(r["weights_mb"] * 2**20) for r in info["ranks"]]
    if mode == "tensor":  # each rank: the replicated tensors and half of every layer's matrices
        assert [r["heads"] for r in info["ranks"]] == [3, 3] and [r["kv_heads"] for r in info["ranks"]] == [1, 1]
        assert sum(held) == pytest.approx(total + replicated, rel=1e-3)
        assert held[0] == pytest.approx(held[1], rel=1e-3)
    else:  # the layers once, split in two runs; embedding and final norm on rank 0 only
        assert [r["layers"] for r in info["ranks"]] == [[0, 3], [3, 6]]
        assert sum(held) == pytest.approx(total, rel=1e-3)
    assert all(r["peak_memory_mb"] > 0 and r["sent_mb"] > 0 for r in info["ranks"])


def test_generate_json_reports_the_group_and_only_rank_0_prints():
    result = launch("-m", "edgegen", "generate", "tiny-chat", "--runtime", "mlx", "-p", "What is a generator?",
                    "--max-tokens", "8", "--json", "--pipeline")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    timing = json.loads(lines[0])["timing"]
    assert timing["distributed"]["mode"] == "pipeline" and len(timing["distributed"]["ranks"]) == 2


def test_onnx_under_a_group_is_one_line():
    result = launch("-m", "edgegen", "generate", "tiny-chat", "--provider", "cpu", "-p", "hi", timeout=120)
    errors = our_lines(result.stderr)
    assert len(errors) == 1 and "ONNX Runtime has no distributed engine" in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_pipeline_without_a_group_is_one_line():
    result = subprocess.run([sys.executable, "-m", "edgegen", "generate", "tiny-chat", "--runtime", "mlx",
                             "--pipeline", "-p", "hi"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr
    assert "mlx.launch" in result.stderr


def rank_pid(marker: str, rank: int) -> int:
    """The pid of the launched process of `rank` whose environment holds `marker` (Linux /proc)."""
    for entry in Path("/proc").iterdir():
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if f"EDGEGEN_TEST_MARK={marker}".encode() in environ and f"MLX_RANK={rank}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no process of rank {rank}")


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the ranks through /proc")
@pytest.mark.parametrize("victim", [1, 0])
def test_a_killed_rank_ends_the_run_on_the_other_with_one_line(victim, tmp_path):
    """SIGKILL one rank of `edgegen generate` mid-generation: the other ends within the timeout, one line."""
    command = [LAUNCH, "--backend", "ring", "-n", "2", *fresh_port(), "--", sys.executable, "-m", "edgegen",
               "generate", "tiny-chat", "--runtime", "mlx", "-p", "What is a generator?", "--ignore-eos",
               "--max-tokens", "1000000"]
    env = {**os.environ, "EDGEGEN_DISTRIBUTED_TIMEOUT": "20", "PYTHONUNBUFFERED": "1",
           "EDGEGEN_TEST_MARK": str(tmp_path)}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          start_new_session=True) as proc:
        try:
            assert proc.stdout.read(40), "no tokens came"  # generation under way
            os.kill(rank_pid(str(tmp_path), victim), signal.SIGKILL)
            t0 = time.monotonic()
            _, err = proc.communicate(timeout=60)
            assert time.monotonic() - t0 < 30
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    ours = our_lines(err)
    assert len(ours) == 1 and "the distributed run ends" in ours[0], err[-2000:]
    assert f"rank {1 - victim}" in ours[0] and "Traceback" not in err, err[-2000:]


def test_a_stopped_rank_0_sends_nothing_more(monkeypatch, capsys):
    """After the launcher's SIGTERM, rank 0's `finally` blocks and its STOP at exit send nothing: a
    collective with a dead peer would fail or block, and print a second line (seen in CI)."""
    from edgegen.runtimes.mlx import distributed

    class Rank0:
        def rank(self):
            return 0

        def size(self):
            return 2

    monkeypatch.setenv("EDGEGEN_DISTRIBUTED_TIMEOUT", "600")
    ch, sent = distributed.Channel(Rank0()), []
    monkeypatch.setattr(ch, "_sum", sent.append)
    monkeypatch.setattr(distributed, "_channel", ch)
    ch.command([distributed.PING])  # before the SIGTERM, commands go out
    before = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as stopped:
            distributed._rank_0_stopped(signal.SIGTERM, None)
    finally:
        signal.signal(signal.SIGTERM, before)
    with pytest.raises(SystemExit):
        ch.command([distributed.PING])
    distributed.stop()
    monkeypatch.setattr(distributed.time, "sleep", lambda seconds: None)
    ch.last, ch.broken = 0.0, False  # the heartbeat woke before the handler marked the channel broken
    ch._heartbeat()  # returns, sends nothing, raises nothing (a thread's SystemExit fails pytest)
    ch.broken = True  # this channel's own watchdog and heartbeat threads end
    assert len(sent) == 1 and stopped.value.code == 143
    assert len(our_lines(capsys.readouterr().err)) == 1


def test_an_idle_rank_0_keeps_the_others_waiting(tmp_path):
    """A chat waiting for its user sends heartbeats: the followers' timeout does not end the run."""
    out = tmp_path / "idle.json"
    result = launch(str(DRIVER), str(out), "pipeline", "--idle", "7", env={"EDGEGEN_DISTRIBUTED_TIMEOUT": "2"})
    assert result.returncode == 0 and "error" not in result.stderr, result.stderr[-2000:]
    assert json.loads(out.read_text())["greedy"]


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the ranks through /proc")
def test_serve_on_two_ranks_and_ctrl_c_on_rank_0_stops_all(loopback, tmp_path):
    import httpx

    command = [LAUNCH, "--backend", "ring", "-n", "2", *fresh_port(), "--", sys.executable, "-m", "edgegen",
               "serve", "tiny-chat", "--runtime", "mlx", "--port", "0", "--log-level", "warning"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "EDGEGEN_DISTRIBUTED_TIMEOUT": "20",
           "EDGEGEN_TEST_MARK": str(tmp_path)}
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True) as proc:
        try:
            line = ""
            while "serving" not in line:
                line = proc.stderr.readline()
                assert line, "edgegen serve exited before serving"
            url = line.split(" at ")[1].split("/v1")[0]
            body = {"model": "m", "messages": [{"role": "user", "content": "What does json.dumps do?"}],
                    "max_tokens": 16, "temperature": 0}
            reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120).json()
            assert reply["timing"]["distributed"]["size"] == 2
            os.kill(rank_pid(str(tmp_path), 0), signal.SIGINT)  # Ctrl-C on rank 0
            rest = proc.communicate(timeout=60)[1]
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert "interrupted" in rest and "Traceback" not in rest and proc.returncode == 0, rest
    import edgegen

    alone = edgegen.load("tiny-chat", runtime="mlx")
    expected = alone.generate(alone.tokenizer.encode_chat(body["messages"]), max_tokens=16)
    assert reply["choices"][0]["message"]["content"] == expected.text
