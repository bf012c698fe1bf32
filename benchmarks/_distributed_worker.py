"""One measured run of bench_distributed.py: edgegen on one MLX folder, alone or as rank 0 of a group.

    python _distributed_worker.py FOLDER MODE PROMPT_TOKENS NEW_TOKENS OUT.json
    mlx.launch --backend ring -n 2 -- python _distributed_worker.py FOLDER tensor 128 32 OUT.json
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import edgegen


def main() -> None:
    folder, mode, prompt_tokens, new_tokens, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), \
        Path(sys.argv[5])
    t0 = time.perf_counter()
    model = edgegen.load(folder, parallel=None if mode == "one" else mode)
    load_s = time.perf_counter() - t0
    vocab = len(model.tokenizer.vocabulary())
    prompt = [random.Random(0).randrange(100, vocab) for _ in range(prompt_tokens)]

    def run(tokens: int):
        model.reset()
        return model.generate(prompt, max_tokens=tokens, ignore_eos=True)

    warm = run(4)  # warm-up: graphs, caches, connections
    first = run(1)  # prefill and one token: what the decode tokens below add to the bytes sent
    full = run(new_tokens)
    result = {"mode": mode, "load_s": round(load_s, 2), "tokens": full.token_ids,
              "prefill_tok_s": full.stats.prefill_tokens_per_s, "decode_tok_s": full.stats.decode_tokens_per_s,
              "peak_memory_mb": [full.stats.peak_memory_mb]}
    if full.stats.distributed:
        marks = [[r["sent_mb"] * 2**20 for r in g.stats.distributed["ranks"]] for g in (warm, first, full)]
        result["ranks"] = full.stats.distributed["ranks"]
        result["peak_memory_mb"] = [r["peak_memory_mb"] for r in result["ranks"]]
        # bytes each rank sent per decoded token: a full run's bytes beyond those of prefill + 1 token
        result["bytes_per_token"] = [((c - b) - (b - a)) / max(new_tokens - 1, 1) for a, b, c in zip(*marks)]
    import mlx.core as mx

    result["mlx_peak_mb"] = mx.get_peak_memory() / 1e6  # MLX's allocator, as mlx-lm reports it (its GB are 1e9 B)
    out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
