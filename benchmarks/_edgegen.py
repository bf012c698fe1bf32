"""edgegen's own engines, driven only through its public API (`edgegen.convert` / `edgegen.load`)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from _common import EngineUnavailable, RunStats, cached_build, log, sources_key

REPO_ROOT = Path(__file__).resolve().parent.parent
Runner = Callable[[list[int], int], RunStats]


def import_edgegen() -> ModuleType:
    """Import edgegen, from the repository itself when it is not installed."""
    try:
        import edgegen
    except ImportError:
        sys.path.insert(0, str(REPO_ROOT))
        try:
            import edgegen
        except ImportError as err:
            raise EngineUnavailable(f"edgegen is not importable ({err}); pip install -e .") from err
    missing = [n for n in ("convert", "load") if not hasattr(edgegen, n)]
    if missing:
        raise EngineUnavailable(f"edgegen has no {', '.join(missing)} yet")
    return edgegen


def prepare(ckpt: Path, name: str, runtime: str, quant: str) -> Path:
    edgegen = import_edgegen()

    def build(out: Path) -> None:
        grouping = {} if quant == "none" else {"group_size": 32}  # only for q8/q4
        edgegen.convert(str(ckpt), str(out), runtime=runtime, dtype="fp32", quant=quant,
                        **grouping)

    # edgegen changes between commits: key the cache on its sources, not just its version
    return cached_build(name, ckpt, build, sources_key(Path(edgegen.__file__).parent))


def new_tokens_only(token_ids: list[int], prompt: list[int]) -> list[int]:
    """Accept either the new tokens alone or prompt + new tokens."""
    if len(token_ids) > len(prompt) and token_ids[: len(prompt)] == prompt:
        return token_ids[len(prompt):]
    return token_ids


def open_engine(path: Path, threads: int) -> Runner:
    """`edgegen.load(path).generate(...)`, timed by edgegen's own stats (prefill/decode seconds)."""
    edgegen = import_edgegen()
    model = edgegen.load(str(path))

    def run(prompt: list[int], new_tokens: int) -> RunStats:
        if hasattr(model, "reset"):
            model.reset()  # forget the previous run's KV cache: no prefix reuse across runs
        t0 = time.perf_counter()
        g = model.generate(list(prompt), max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
        wall = time.perf_counter() - t0
        return from_generation(g, prompt, new_tokens, wall)

    return run


def from_generation(g: object, prompt: list[int], new_tokens: int, wall: float) -> RunStats:
    """RunStats from edgegen's own figures, checked against the prompt length and the wall clock."""
    stats = g.stats
    tokens = new_tokens_only([int(t) for t in g.token_ids], prompt)
    ran = getattr(stats, "prompt_tokens", len(prompt))
    if ran != len(prompt):
        log(f"    note: edgegen ran {ran} of {len(prompt)} prompt tokens (cached prefix?)")
    ttft = getattr(stats, "prefill_seconds", None) or len(prompt) / stats.prefill_tokens_per_s
    decode = getattr(stats, "decode_seconds", None) or (len(tokens) - 1) / stats.decode_tokens_per_s
    if abs(ttft + decode - wall) > 0.1 * wall:
        log(f"    note: edgegen's times ({ttft + decode:.2f} s) differ from wall ({wall:.2f} s)")
    if len(tokens) != new_tokens:
        log(f"    note: edgegen returned {len(tokens)} tokens, expected {new_tokens}")
    return RunStats(
        len(prompt), ttft, decode, tokens,
        extra={"wall_s": wall, "edgegen_peak_memory_mb": stats.peak_memory_mb,
               "edgegen_prefill_tok_s": stats.prefill_tokens_per_s,
               "edgegen_decode_tok_s": stats.decode_tokens_per_s},
    )
