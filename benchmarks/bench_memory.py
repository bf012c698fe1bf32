"""Memory on big and endless inputs: peak RSS and wall time of the commands that used to read or
allocate everything at once, each in its own process (peak RSS from wait4, so nothing else in
this process counts). With `--against PATH` (another edgegen checkout, e.g. a `git worktree` of
an older commit) every command runs on both in the same run and the ratios are printed.

    python benchmarks/bench_memory.py                       # 400 MB text, 100 MB corpus, 2,000 images
    python benchmarks/bench_memory.py --against /tmp/old --text-mb 100 --images 500
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import cpu_name

ROOT = Path(__file__).resolve().parents[1]




def make_text(path: Path, megabytes: int) -> None:
    """Real prose (the bundled held-out page) repeated to the size asked for."""
    sys.path.insert(0, str(ROOT))
    from edgegen.core.data import HELDOUT, bundled_text

    block = (bundled_text(HELDOUT) + "\n") * 64
    with path.open("w", encoding="utf-8") as f:
        while f.tell() < megabytes * 2**20:
            f.write(block)


def measure(checkout: Path, args: list[str], limit_s: float, limit_gb: float) -> dict:
    """Run `python -m edgegen ARGS` from `checkout` under an address-space limit of `limit_gb` (so
    that a command that takes everything fails alone instead of waking the OOM killer); wall
    seconds, peak RSS, exit code, last line."""
    import resource

    env = {**os.environ, "PYTHONPATH": str(checkout)}
    cap = int(limit_gb * 2**30)
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-m", "edgegen", *args], cwd=checkout, env=env,
                                stdout=subprocess.DEVNULL, stderr=err,
                                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap)))
        try:
            _, status, usage = _wait(proc, limit_s)
        except TimeoutError:
            return {"ok": False, "seconds": limit_s, "peak_mb": None, "last": f"stopped after {limit_s:.0f} s"}
        seconds = time.perf_counter() - start
        err.seek(0)
        lines = [x for x in err.read().decode(errors="replace").splitlines() if x.strip()]
    code = os.waitstatus_to_exitcode(status)
    return {"ok": code == 0, "code": code, "seconds": round(seconds, 2), "peak_mb": round(usage.ru_maxrss / 1024, 1),
            "last": lines[-1][:120] if lines else ""}


def _wait(proc: subprocess.Popen, limit_s: float):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            return pid, status, usage
        time.sleep(0.05)
    proc.kill()
    os.wait4(proc.pid, 0)
    raise TimeoutError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text-mb", type=int, default=400, help="size of the text `perplexity` reads")
    parser.add_argument("--corpus-mb", type=int, default=100, help="size of the corpus `ngram build` counts")
    parser.add_argument("--images", type=int, default=2000, help="-n of `edgegen image`")
    parser.add_argument("--against", type=Path, default=None, help="another edgegen checkout to run beside this one")
    parser.add_argument("--limit-s", type=float, default=900, help="stop a command after this many seconds")
    parser.add_argument("--limit-gb", type=float, default=8, help="address-space limit of each command")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here too")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    text, corpus = work / "text.txt", work / "corpus.txt"
    make_text(text, args.text_mb)
    make_text(corpus, args.corpus_mb)
    cases = {
        "perplexity --text /dev/zero --max-tokens 100": ["perplexity", "--text", "/dev/zero", "--max-tokens", "100"],
        f"perplexity --text {args.text_mb} MB --max-tokens 100": ["perplexity", "--text", str(text),
                                                                  "--max-tokens", "100"],
        f"ngram build --text {args.corpus_mb} MB": ["ngram", "build", "--text", str(corpus), "-o", "{out}/store"],
        f"image -n {args.images // 10}": ["image", "-c", "1", "-n", str(args.images // 10), "-o", "{out}/a.png"],
        f"image -n {args.images}": ["image", "-c", "1", "-n", str(args.images), "-o", "{out}/b.png"],
    }
    checkouts = {"edgegen": ROOT, **({"against": args.against.resolve()} if args.against else {})}
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; peak RSS from wait4; each command in its own process "
          f"under a {args.limit_gb:g} GB address-space limit")
    rows = []
    for case, argv in cases.items():
        row = {"case": case}
        for name, checkout in checkouts.items():
            out = Path(tempfile.mkdtemp(dir=work))
            row[name] = measure(checkout, [a.format(out=out) for a in argv], args.limit_s, args.limit_gb)
            print(f"  {case:<48} {name:<8} {_cell(row[name])}", file=sys.stderr, flush=True)
        rows.append(row)
    print(f"\n{'case':<48} {'edgegen':>22}" + (f" {'against':>22} {'memory ratio':>13} {'time ratio':>11}"
                                             if args.against else ""))
    for row in rows:
        line = f"{row['case']:<48} {_cell(row['edgegen']):>22}"
        if args.against:
            a, b = row["edgegen"], row["against"]
            ratio = (lambda k: f"{b[k] / a[k]:.1f}x" if a["ok"] and b["ok"] and a[k] else "-")
            line += f" {_cell(b):>22} {ratio('peak_mb'):>13} {ratio('seconds'):>11}"
        print(line)
    failed = [(row["case"], n, row[n]["last"]) for row in rows for n in checkouts if not row[n]["ok"]]
    for case, name, last in failed:
        print(f"failed: {case} ({name}): {last}")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_name(), "rows": rows}, indent=1) + "\n")


def _cell(r: dict) -> str:
    if not r["ok"]:
        return f"failed ({r.get('peak_mb') or '?'} MB)"
    return f"{r['peak_mb']:.0f} MB {r['seconds']:.1f} s"


if __name__ == "__main__":
    main()
