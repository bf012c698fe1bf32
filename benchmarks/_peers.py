"""Peer engines run through their own converters and generate loops: ORT GenAI and mlx-lm.

Each engine has `prepare(ckpt) -> artefact dir` (cached) and `open(artefact, threads) -> run`,
where `run(prompt_ids, new_tokens) -> RunStats` does one greedy generation with EOS ignored.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from _common import RunStats, cached_build, package_key, run_logged, time_greedy, time_stream

Runner = Callable[[list[int], int], RunStats]


def offline_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


# ---------------------------------------------------------------- onnxruntime-genai


def prepare_ortgenai(ckpt: Path, precision: str) -> Path:
    """Run ORT GenAI's own model builder (`-p int4|fp32 -e cpu`) on the checkpoint."""
    name = f"ort-genai-{precision}"

    def build(out: Path) -> None:
        hf_cache = out.parent / f"{name}.hf-cache"
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(ckpt),
               "-o", str(out), "-p", precision, "-e", "cpu", "-c", str(hf_cache)]
        try:
            run_logged(cmd, out.parent / f"{name}.log", env=offline_env())
        finally:
            shutil.rmtree(hf_cache, ignore_errors=True)

    return cached_build(name, ckpt, build, package_key("onnxruntime-genai", "onnxruntime"))


def open_ortgenai(path: Path, threads: int) -> Runner:
    """og.Model + og.Generator, greedy; min_length = max_length so EOS never ends the run."""
    import onnxruntime_genai as og

    config = og.Config(str(path))
    options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
    config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
    model = og.Model(config)

    def run(prompt: list[int], new_tokens: int) -> RunStats:
        total = len(prompt) + new_tokens
        state: dict = {}

        def first() -> int:
            params = og.GeneratorParams(model)
            params.set_search_options(max_length=total, min_length=total, do_sample=False)
            state["gen"] = gen = og.Generator(model, params)
            gen.append_tokens(prompt)  # prompt forward: logits for the last position
            gen.generate_next_token()  # picks token 1 from those logits
            return int(gen.get_next_tokens()[0])

        def step(_tok: int) -> int:
            gen = state["gen"]
            gen.generate_next_token()  # forward of the previous token, then argmax
            return int(gen.get_next_tokens()[0])

        return time_greedy(first, step, len(prompt), new_tokens)

    return run


# ---------------------------------------------------------------- mlx-lm


def prepare_mlxlm(ckpt: Path) -> Path:
    """`mlx_lm.convert` to an fp32 MLX folder (no quantization)."""
    from mlx_lm import convert

    def build(out: Path) -> None:
        convert(str(ckpt), str(out), dtype="float32")

    return cached_build("mlx-lm-fp32", ckpt, build, package_key("mlx-lm", "mlx"))


def open_mlxlm(path: Path, threads: int) -> Runner:
    """mlx-lm's own `generate_step` (the loop under `stream_generate`, which has no EOS check)."""
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.generate import generate_step

    model, _tokenizer = load(str(path))

    def greedy(logprobs: mx.array) -> mx.array:
        return mx.argmax(logprobs, axis=-1)

    def run(prompt: list[int], new_tokens: int) -> RunStats:
        steps = generate_step(mx.array(prompt), model, max_tokens=new_tokens, sampler=greedy)
        return time_stream((int(tok) for tok, _ in steps), len(prompt), new_tokens)

    return run
