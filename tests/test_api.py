"""The Python API and the CLI front ends on a converted tiny model."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import sys
import time

import pytest
from click.testing import CliRunner

import edgegen
from edgegen.cli import main
from edgegen.decoding.autoregressive import GenerationStats


@pytest.fixture(scope="module")
def model(converted):
    return edgegen.load(converted("qwen2", "onnx"))


def test_stream_pieces_equal_generate_text(model):
    stats = GenerationStats()
    pieces = list(model.stream("The number 3", max_tokens=12, ignore_eos=True, stats=stats))
    result = model.generate("The number 3", max_tokens=12, ignore_eos=True)
    assert "".join(pieces) == result.text and stats.generated_tokens == 12
    assert result.stats.peak_memory_mb > 0 and result.stats.decode_tokens_per_s > 0


def test_stop_string_cuts_the_text(model):
    full = model.generate("The number 3", max_tokens=16, ignore_eos=True).text
    assert len(full) > 4
    stop = full[2:4]
    cut = model.generate("The number 3", max_tokens=16, ignore_eos=True, stop=[stop])
    assert cut.text == full[: full.index(stop)] and cut.stats.finish_reason == "stop"


def test_seeded_sampling_is_reproducible_through_the_api(model):
    a = model.generate("The", max_tokens=10, temperature=1.0, seed=5, ignore_eos=True)
    b = model.generate("The", max_tokens=10, temperature=1.0, seed=5, ignore_eos=True)
    assert a.token_ids == b.token_ids


def test_chat_renders_the_template_and_replies(model):
    messages = [{"role": "user", "content": "hello"}]
    reply = model.chat(messages, max_tokens=5, ignore_eos=True)
    assert len(reply.token_ids) == 5
    assert model.session.tokens[: len(model.tokenizer.encode_chat(messages))] == model.tokenizer.encode_chat(messages)


def test_generate_json(converted):
    result = CliRunner().invoke(main, ["generate", str(converted("qwen2", "onnx")), "-p", "hi", "-m", "4", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert len(payload["token_ids"]) <= 4 and "decode_tokens_per_s" in payload["timing"]


def test_generate_streams_and_reports_speed(converted):
    result = CliRunner().invoke(main, ["generate", str(converted("llama", "mlx")), "-p", "hi", "-m", "4"])
    assert result.exit_code == 0, result.output
    assert "tokens-per-sec" in result.stderr and "Peak memory" in result.stderr


def test_chat_session_keeps_cache_and_resets(converted):
    result = CliRunner().invoke(main, ["chat", str(converted("qwen2", "onnx")), "-m", "3"],
                                input="hello\nand again\n/reset\nfresh\n/quit\n")
    assert result.exit_code == 0, result.output
    prompts = [line for line in result.stderr.splitlines() if line.startswith("Prompt:")]
    assert len(prompts) == 3
    counts = [int(line.split()[1]) for line in prompts]
    assert counts[1] < counts[0] + 8  # the second turn ran only the new tokens
    assert "conversation cleared" in result.stderr


def test_info_describes_the_manifest(converted):
    result = CliRunner().invoke(main, ["info", str(converted("qwen3", "mlx", "q4"))])
    assert result.exit_code == 0
    assert "qwen3" in result.stdout and "q4 (group size 64)" in result.stdout


def test_provider_falls_back_to_cpu_with_a_message(converted, capsys):
    model = edgegen.load(converted("qwen2", "onnx"), provider="coreml")
    assert model.backend.provider == "cpu"
    assert "coreml execution provider is not in this onnxruntime build" in capsys.readouterr().err


def test_mlx_metal_falls_back_to_cpu_with_a_message(converted, capsys):
    import mlx.core as mx

    if mx.metal.is_available():
        pytest.skip("Metal is available here")
    model = edgegen.load(converted("qwen2", "mlx"), device="gpu")
    assert model.backend.device == "cpu" and "Metal is not available" in capsys.readouterr().err


def test_ctrl_c_stops_the_reply_not_the_chat(converted, monkeypatch):
    from edgegen.api import Model

    real = Model.stream_chat
    calls = []

    def interrupted(self, messages, *args, **kwargs):
        calls.append(len(messages))
        if len(calls) == 1:  # the first reply is cut off by Ctrl-C after one piece
            yield "partial"
            raise KeyboardInterrupt
        yield from real(self, messages, *args, **kwargs)

    monkeypatch.setattr(Model, "stream_chat", interrupted)
    result = CliRunner().invoke(main, ["chat", str(converted("qwen2", "onnx")), "-m", "2"],
                                input="hello\nagain\n/quit\n")
    assert result.exit_code == 0, result.output
    assert "partial [stopped]" in result.stdout and calls == [1, 3]


def test_a_conversation_past_the_context_is_one_line_and_the_chat_goes_on(converted):
    long = " ".join(["word"] * 3000)
    result = CliRunner().invoke(main, ["chat", str(converted("qwen2", "onnx")), "-m", "2"],
                                input=f"{long}\nhello\n/quit\n")
    assert result.exit_code == 0, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("edgegen: error:")]
    assert len(errors) == 1 and "/reset" in errors[0] and "Traceback" not in result.stderr
    assert result.stderr.count("Generation:") == 1  # the next turn was answered


def test_a_prompt_past_the_context_is_refused_when_the_stream_is_made(model):
    from edgegen.core.errors import ContextOverflow

    with pytest.raises(ContextOverflow):
        model.stream([5] * 600, max_tokens=4)  # not only when iterated



def test_chat_at_a_terminal_edits_lines_and_reads_a_paste_whole():
    """At a terminal (a pty here), `edgegen chat` reads lines through readline: the arrow keys edit
    the line (they reached the model as escape codes), and a multi-line bracketed paste is one turn
    (it was one turn per line)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: edgegen chat on the pty
        os.execvp(sys.executable, [sys.executable, "-m", "edgegen", "chat", "tiny-chat", "-m", "4"])
    seen = b""

    def read_until(marker: bytes, count: int) -> None:
        nonlocal seen
        deadline = time.monotonic() + 120
        while seen.count(marker) < count and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    seen += os.read(fd, 65536)
                except OSError:  # the child is gone
                    return

    try:
        read_until(b">>> ", 1)
        os.write(fd, b"What is jsn?\x1b[D\x1b[Do\r")  # Left twice, then the missing letter
        read_until(b"Peak memory", 1)
        os.write(fd, b"/reset\r")  # (so that the next prompt is counted whole)
        read_until(b"conversation cleared", 1)
        os.write(fd, b"\x1b[200~line one\nline two\x1b[201~\r")
        read_until(b"Peak memory", 2)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)
    turns = seen.decode("utf-8", "replace").split("Peak memory")
    model = edgegen.load("tiny-chat")
    for turn, asked in zip(turns, (["What is json?"], ["line one\nline two"])):
        tokens = len(model.encode_chat([{"role": "user", "content": asked[0]}]))
        assert turn.count("Prompt:") == 1 and f"Prompt: {tokens} tokens" in turn, turn
