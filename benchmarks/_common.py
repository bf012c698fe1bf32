"""Shared pieces of the autoregressive benchmark: timings, caching of converted models, logging."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from _checkpoint import CACHE_ROOT, DONE_MARKER

CONVERTED_ROOT = CACHE_ROOT / "qwen05b-shape-out"
STAMP = ".bench-stamp"


class EngineUnavailable(Exception):
    """The engine's package is missing: the engine is reported as skipped, not failed."""


@dataclass
class RunStats:
    """One timed generation: `tokens` greedy tokens after a `prompt_tokens`-token prompt."""

    prompt_tokens: int
    ttft_s: float  # prompt forward + first token
    decode_s: float  # every token after the first
    tokens: list[int] = field(default_factory=list)
    prefill_tok_s: float | None = None  # set when the engine reports its own figures
    decode_tok_s: float | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.prefill_tok_s is None:
            self.prefill_tok_s = self.prompt_tokens / self.ttft_s
        if self.decode_tok_s is None:
            self.decode_tok_s = (len(self.tokens) - 1) / self.decode_s if self.decode_s else 0.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def time_greedy(first: Callable[[], int], step: Callable[[int], int], prompt_len: int,
                new_tokens: int) -> RunStats:
    """Time a greedy loop: `first()` runs the prompt and returns token 1; `step(t)` feeds t back."""
    t0 = time.perf_counter()
    tok = first()
    t1 = time.perf_counter()
    tokens = [tok]
    while len(tokens) < new_tokens:
        tok = step(tok)
        tokens.append(tok)
    t2 = time.perf_counter()
    return RunStats(prompt_len, t1 - t0, t2 - t1, tokens)


def time_stream(stream: Iterator[int], prompt_len: int, new_tokens: int) -> RunStats:
    """Time an engine's own token stream (an iterator that yields ints)."""
    t0 = time.perf_counter()
    tokens = [next(stream)]
    t1 = time.perf_counter()
    for tok in stream:
        tokens.append(tok)
        if len(tokens) >= new_tokens:
            break
    t2 = time.perf_counter()
    return RunStats(prompt_len, t1 - t0, t2 - t1, tokens)


def peak_rss_mb() -> float:
    """This process's own peak RSS. Linux's VmHWM starts afresh at exec; ru_maxrss does not (a child
    started from a large parent reports the parent's peak), so it is only the fallback."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def ensure_checkpoint_in_child() -> Path:
    """Build (or find) the benchmark checkpoint in a child process, so that building it (torch and a
    0.5B model in memory) never inflates the parent, or the peaks its children report."""
    code = "import sys; sys.path.insert(0, sys.argv[1]); from _checkpoint import ensure_checkpoint; print(ensure_checkpoint())"
    out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).resolve().parent)], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    return Path(out.strip().splitlines()[-1])


def summarize(runs: list[RunStats]) -> dict:
    """Medians over the timed runs, plus every run's figures."""
    return {
        "prefill_tok_s": statistics.median(r.prefill_tok_s for r in runs),
        "decode_tok_s": statistics.median(r.decode_tok_s for r in runs),
        "ttft_s": statistics.median(r.ttft_s for r in runs),
        "runs": [{k: v for k, v in asdict(r).items() if k != "tokens"} for r in runs],
        "tokens": runs[-1].tokens,
    }


def checkpoint_stamp(ckpt: Path) -> str:
    """What the benchmark checkpoint's builder wrote, or (a folder it did not build, e.g. a bundled
    model) a hash of the folder's files."""
    if (ckpt / DONE_MARKER).exists():
        return (ckpt / DONE_MARKER).read_text()
    digest = hashlib.sha1()
    for path in sorted(p for p in ckpt.rglob("*") if p.is_file()):
        digest.update(path.relative_to(ckpt).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def cached_build(name: str, ckpt: Path, build: Callable[[Path], None], key: str = "") -> Path:
    """Return CONVERTED_ROOT/name, running `build(out)` first unless it was built from `ckpt`
    with the same converter `key` (a version, or a hash of the converter's sources)."""
    out = CONVERTED_ROOT / name
    stamp = checkpoint_stamp(ckpt) + "\n" + key
    if (out / STAMP).exists() and (out / STAMP).read_text() == stamp:
        log(f"[{name}] using cached {out}")
        return out
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    build(out)
    (out / STAMP).write_text(stamp)
    seconds = time.perf_counter() - t0
    (out / ".bench-build.json").write_text(json.dumps({"seconds": seconds}))
    log(f"[{name}] built {out} in {seconds:.1f} s ({dir_mb(out):.0f} MiB)")
    return out


def package_key(*dists: str) -> str:
    """Cache key from installed versions: a new converter version rebuilds the artefact."""
    import importlib.metadata

    return " ".join(f"{d}=={importlib.metadata.version(d)}" for d in dists)


def sources_key(root: Path) -> str:
    """Cache key from a source tree's contents, for converters that change without a release."""
    digest = hashlib.sha1()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def build_seconds(out: Path) -> float | None:
    path = out / ".bench-build.json"
    return json.loads(path.read_text())["seconds"] if path.exists() else None


def dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def run_logged(cmd: list[str], log_path: Path, env: dict | None = None) -> None:
    """Run a converter command, its chatter going to `log_path`; raise with the log's tail."""
    log(f"    $ {' '.join(cmd)}  (log: {log_path})")
    with open(log_path, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")


def cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat (Linux)."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return 0.0, 0.0
    ticks = [float(x) for x in first[1:9]]  # user nice system idle iowait irq softirq steal
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - ticks[3] - ticks[4]) / hz, sum(ticks) / hz


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class OthersCpu:
    """Share of the machine's CPU that other processes used while this one was measuring."""

    def __init__(self) -> None:
        self.start = (*cpu_seconds(), own_cpu_seconds())

    def share(self) -> float | None:
        busy0, total0, own0 = self.start
        busy1, total1 = cpu_seconds()
        if total1 <= total0:
            return None
        others = (busy1 - busy0) - (own_cpu_seconds() - own0)
        return max(0.0, others / (total1 - total0))


def busy_share(seconds: float = 2.0) -> float:
    """Share of the machine's CPU in use over the next `seconds` (call while idle yourself)."""
    busy0, total0 = cpu_seconds()
    time.sleep(seconds)
    busy1, total1 = cpu_seconds()
    return (busy1 - busy0) / (total1 - total0) if total1 > total0 else 0.0


def wait_for_quiet(max_busy: float, timeout_s: float) -> float:
    """Wait (at most `timeout_s`) until other processes use under `max_busy` of the CPU."""
    deadline, told = time.monotonic() + timeout_s, 0.0
    busy = busy_share()
    while busy > max_busy and time.monotonic() < deadline:
        if time.monotonic() - told > 30:
            log(f"    machine busy ({busy:.0%} of CPU used by others); waiting up to "
                f"{deadline - time.monotonic():.0f} s for it to quieten ...")
            told = time.monotonic()
        busy = busy_share()
    return busy
