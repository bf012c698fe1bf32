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


def prepare_ortgenai(ckpt: Path, precision: str, name: str = "", extra: tuple[str, ...] = ()) -> Path:
    """Run ORT GenAI's own model builder (`-p int4|fp32 -e cpu [--extra_options ...]`) on the checkpoint."""
    name = name or f"ort-genai-{precision}"

    def build(out: Path) -> None:
        hf_cache = out.parent / f"{name}.hf-cache"
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(ckpt),
               "-o", str(out), "-p", precision, "-e", "cpu", "-c", str(hf_cache)]
        cmd += ["--extra_options", *extra] if extra else []
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


def prepare_ortgenai_pair(target: Path, draft: Path) -> Path:
    """Three folders: `plain/`, the target's fp32 build; `draft/`, the same plus the draft's fp32
    build (`draft.onnx`) as `model.draft`, the layout ORT GenAI's draft-model speculative decoding
    reads (its docs/speculative_decoding.md); `q4/`, the same with the target's own int4 build as
    the draft (what our `--draft q4` does). EOS is set to the padding id (an id past the vocabulary
    is refused): runs end at max_length, as ours ignore EOS (its `min_length` would also hold
    speculation off)."""
    built = prepare_ortgenai(target, "fp32", f"ort-genai-{target.name}-fp32")
    drafts = {"draft": prepare_ortgenai(draft, "fp32", f"ort-genai-{draft.name}-draft-fp32", ("filename=draft.onnx",)),
              "q4": prepare_ortgenai(target, "int4", f"ort-genai-{target.name}-draft-int4", ("filename=draft.onnx",))}

    def build(out: Path) -> None:
        for kind in ("plain", *drafts):
            folder = out / kind
            folder.mkdir(parents=True)
            extra = [drafts[kind] / "draft.onnx", drafts[kind] / "draft.onnx.data"] if kind in drafts else []
            for src in list(built.iterdir()) + extra:
                if src.is_file() and not src.name.startswith("."):
                    shutil.copy2(src, folder / src.name)
            config = json.loads((built / "genai_config.json").read_text())
            if kind in drafts:
                config["model"]["draft"] = json.loads((drafts[kind] / "genai_config.json").read_text())["model"]["decoder"]
            model = config["model"]
            model["eos_token_id"] = [model.get("pad_token_id", model["vocab_size"] - 1)]  # never written
            (folder / "genai_config.json").write_text(json.dumps(config, indent=1))

    return cached_build(f"ort-genai-{target.name}+{draft.name}", target, build,
                        package_key("onnxruntime-genai", "onnxruntime") + f" draft={draft} eos=pad q4")


def open_ortgenai_speculation(path: Path, threads: int):
    """`run(prompt, new_tokens, mode)` with mode "plain", "draft" (the draft model, K = 4), "q4"
    (the target's int4 build as the draft, K = 4) or "ngram" (its n-gram lookup, n = 3, K = 4):
    decode tok/s, tokens, its acceptance rate and tokens per target forward."""
    import time

    import onnxruntime_genai as og

    options = {"session_options": {"intra_op_num_threads": threads, "inter_op_num_threads": 1}}
    models = {}
    for kind in ("plain", "draft", "q4"):
        config = og.Config(str(path / kind))
        config.overlay(json.dumps({"model": {"decoder": options, **({"draft": options} if kind != "plain" else {})}}))
        models[kind] = og.Model(config)

    def run(prompt: list[int], new_tokens: int, mode: str) -> dict:
        model = models[mode if mode in models else "plain"]
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(prompt) + new_tokens, do_sample=False)
        if mode != "plain":
            params.set_speculative_options(max_draft_tokens=4, **({"ngram_size": 3} if mode == "ngram" else {}))
        gen = og.Generator(model, params)
        gen.append_tokens(prompt)
        gen.generate_next_token()  # the prompt's forward gives token 1: the time to first token
        t0 = time.perf_counter()
        while not gen.is_done():
            gen.generate_next_token()
        seconds = time.perf_counter() - t0
        tokens = [int(t) for t in gen.get_sequence(0)][len(prompt):]
        stats = gen.get_speculative_stats() if mode != "plain" else {}
        forwards = stats.get("target_forward_passes", 0) + stats.get("standard_fallback_steps", 0)
        return {"decode_tok_s": (len(tokens) - 1) / seconds, "tokens": tokens,
                "acceptance": float(stats.get("acceptance_rate", 0.0)),
                "tokens_per_forward": len(tokens) / forwards if forwards else 1.0}

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
