"""Tokens per second through `edgegen serve` against `edgegen generate` on the same prompt: what the
server costs per token.

    python benchmarks/bench_server.py [MODEL] [--tokens 256] [--repeats 5] [--runtime onnx]

`edgegen generate`'s path (the `Model` call it makes, in a child process of its own: the CLI has no
flag to ignore EOS) against `edgegen serve` in another child process, driven over loopback by a
plain httpx client, streamed and not. Same chat-templated prompt, greedy, EOS ignored so that every
run decodes exactly --tokens. Runs alternate between the paths (median of --repeats) so that a
noisy machine hurts them alike. Reported: decode tok/s as each path measures it, the client's own
figure for the stream (first to last chunk as received), and the difference per token. Last, the
server's own cost per token with no model behind it (a stand-in that yields pieces instantly),
which the model-bound figures above can hide in a noisy machine's variance.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

PROMPT = "Explain what json.dumps does, with an example."


def generate_cli(model: str, tokens: int, runtime: str | None) -> float:
    """decode tok/s of what `edgegen generate` runs (chat-templated prompt), EOS ignored, after one
    warm-up run of the same length (a server that has answered a few requests is warm too)."""
    code = ("import json, sys, edgegen\n"
            "from edgegen.cli.generate import prompt_ids\n"
            f"m = edgegen.load({model!r}, runtime={runtime!r})\n"
            f"ids = prompt_ids(m, {PROMPT!r}, False)\n"
            f"m.generate(ids, max_tokens={tokens}, ignore_eos=True)\n"  # warm-up: steady state, as a server's
            f"r = m.generate(ids, max_tokens={tokens}, ignore_eos=True, temperature=0)\n"
            "print(json.dumps(r.stats.timing()))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the generate child failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["decode_tokens_per_s"]


def start_server(model: str, runtime: str | None) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "edgegen", "serve", model, "--port", "0", "--log-level", "warning"]
    if runtime:
        command += ["--runtime", runtime]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = ""
    while "serving" not in line:
        line = proc.stderr.readline()
        if not line:
            raise SystemExit("edgegen serve did not start")
    return proc, line.split(" at ")[1].split("/v1")[0]


def through_server(http, tokens: int, stream: bool) -> tuple[float, float]:
    """(server-side decode tok/s, client-side decode tok/s), over plain httpx so that the client's
    own parsing costs as little as possible."""
    body = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": tokens, "temperature": 0,
            "ignore_eos": True, "stream": stream}
    if not stream:
        return http.post("/v1/chat/completions", json=body).json()["timing"]["decode_tokens_per_s"], float("nan")
    arrivals, timing = [], None
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                arrivals.append(time.perf_counter())
            timing = chunk.get("timing") or timing
    client_rate = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    return timing["decode_tokens_per_s"], client_rate


class Instant:
    """A stand-in model that yields its pieces with no work: what is left is the server."""

    def __init__(self, model):
        self.tokenizer, self.manifest = model.tokenizer, model.manifest
        self.encode_chat = model.encode_chat  # the server renders chat prompts through the model

    def stream(self, ids, options, stats):
        def pieces():
            start = time.perf_counter()
            for i in range(options.max_tokens):
                stats.generated_tokens = i + 1
                yield "word "
            stats.decode_seconds, stats.finish_reason = time.perf_counter() - start, "length"

        return pieces()


def pipeline_cost(model_name: str, runtime: str | None, tokens: int = 5000) -> dict[str, float]:
    """µs per token of the server alone (worker hand-off, JSON, SSE, loopback and the client)."""
    import httpx

    import edgegen
    from edgegen.server import ThreadedServer, create_app

    out = {}
    model = edgegen.load(model_name, runtime=runtime)
    with ThreadedServer(create_app(Instant(model))) as url, httpx.Client(base_url=url, trust_env=False) as http:
        for stream in (False, True) * 2:  # the second round counts
            start = time.perf_counter()
            body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": tokens, "stream": stream}
            with http.stream("POST", "/v1/chat/completions", json=body) as response:
                for _ in response.iter_lines():
                    pass
            out["streaming" if stream else "non-streaming"] = (time.perf_counter() - start) / tokens * 1e6
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", default="tiny-chat")
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--runtime", default=None)
    args = p.parse_args()

    import httpx

    proc, url = start_server(args.model, args.runtime)
    client = httpx.Client(base_url=url, trust_env=False, timeout=600)
    runs: dict[str, list[float]] = {k: [] for k in ("generate", "server", "stream", "stream_client")}
    try:
        through_server(client, args.tokens, True)  # warm-up
        for i in range(args.repeats):
            runs["generate"].append(generate_cli(args.model, args.tokens, args.runtime))
            runs["server"].append(through_server(client, args.tokens, False)[0])
            server_side, client_side = through_server(client, args.tokens, True)
            runs["stream"].append(server_side)
            runs["stream_client"].append(client_side)
            print(f"run {i + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in runs.items()),
                  file=sys.stderr)
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=60)
    report(args, {k: statistics.median(v) for k, v in runs.items()})
    cost = pipeline_cost(args.model, args.runtime)
    print("\nthe server alone (no model; client in the same process): "
          + ", ".join(f"{k} {v:.0f} µs/token" for k, v in cost.items()))


def report(args: argparse.Namespace, median: dict[str, float]) -> None:
    base = median["generate"]
    rows = [("edgegen generate (its Model call, own process)", "generate"),
            ("edgegen serve, non-streaming (server's figure)", "server"),
            ("edgegen serve, streaming (server's figure)", "stream"),
            ("edgegen serve, streaming (client's figure)", "stream_client")]
    print(f"{args.model}: {args.tokens} greedy tokens after the same chat prompt, median of {args.repeats}\n")
    print("| path | decode tok/s | ms/token | overhead µs/token | × generate |")
    print("|---|---:|---:|---:|---:|")
    for label, key in rows:
        rate = median[key]
        overhead = (1 / rate - 1 / base) * 1e6
        print(f"| {label} | {rate:.1f} | {1000 / rate:.3f} | {overhead:+.0f} | {rate / base:.2f} |")


if __name__ == "__main__":
    main()
