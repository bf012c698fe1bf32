"""`edgegen bench` on the bundled tiny-chat: a table (or JSON) of positive speeds per setting."""

from __future__ import annotations

import json

from click.testing import CliRunner

from edgegen.cli import main


def test_bench_prints_a_table_with_positive_figures():
    result = CliRunner().invoke(main, ["bench", "tiny-chat", "--prompt-tokens", "16,64,4096", "--gen-tokens", "8",
                                       "--repeats", "2"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [cell.strip() for cell in lines[0].split("|")[1:-1]] == [
        "model", "runtime", "quant", "prompt", "gen", "prefill tok/s", "decode tok/s", "peak MB"]
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines[2:4]]
    assert [row[3:5] for row in rows] == [["16", "8"], ["64", "8"]]
    for row in rows:
        prefill, decode, peak = (float(cell.split(" ± ")[0]) for cell in row[5:8])
        assert prefill > 0 and decode > 0 and peak > 0
    assert "skipped prompt 4096, gen 8" in lines[4]
    assert "bench" in result.stderr  # the progress bar


def test_bench_json_and_shared_decoding_flags():
    result = CliRunner().invoke(main, ["bench", "--prompt-tokens", "8", "--gen-tokens", "4,6", "--repeats", "2",
                                       "--json", "--temp", "0.7", "--seed", "1"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["prompt_tokens"], r["gen_tokens"], r["repeats"]) for r in rows] == [(8, 4, 2), (8, 6, 2)]
    for row in rows:
        assert len(row["decode_tokens_per_s"]["runs"]) == 2 and row["decode_tokens_per_s"]["mean"] > 0
        assert row["prefill_tokens_per_s"]["mean"] > 0 and row["peak_memory_mb"] > 0
        assert row["model"] == "tiny-chat" and row["runtime"] in ("onnx", "mlx")


def test_bench_refuses_bad_lists_in_one_line():
    for bad in ("x", "0", "12,-3"):
        result = CliRunner().invoke(main, ["bench", "--prompt-tokens", bad])
        assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "--prompt-tokens" in result.stderr
    result = CliRunner().invoke(main, ["bench", "--max-tokens", "3"])
    assert result.exit_code == 2 and "No such option" in result.stderr


def test_bench_says_which_strategy_it_measured():
    result = CliRunner().invoke(main, ["bench", "--prompt-tokens", "16", "--gen-tokens", "8", "--repeats", "1",
                                       "--draft", "prompt-lookup", "--num-draft", "3", "--kv-bits", "8"])
    assert result.exit_code == 0, result.output
    head, _, row = result.stdout.splitlines()[:3]
    assert "strategy" in head and "tok/fwd" in head
    assert "draft prompt-lookup γ 3, kv 8" in row
    plain = json.loads(CliRunner().invoke(main, ["bench", "--prompt-tokens", "8", "--gen-tokens", "4",
                                                 "--repeats", "1", "--json"]).stdout)
    assert plain[0]["strategy"] == "plain" and plain[0]["tokens_per_forward"] == 1.0
