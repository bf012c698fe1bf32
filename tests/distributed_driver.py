"""Run every decoding strategy on the bundled models and write rank 0's tokens as JSON.

    python tests/distributed_driver.py OUT.json [tensor|pipeline]                    # one process
    mlx.launch --backend ring -n 2 -- python tests/distributed_driver.py OUT.json tensor
    ... OUT.json pipeline --idle S   # rank 0 waits S seconds between loading and generating

Under mlx.launch, `edgegen.load` shards the MLX models over the ranks; ranks other than 0 serve
rank 0 from inside `load` and exit there, so everything after it runs on rank 0 only.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import edgegen

PROMPT = [{"role": "user", "content": "What does json.dumps do?"}]
COPY = [{"role": "user", "content": "Repeat the following text exactly:\n\nThe json module encodes and "
                                    "decodes JSON documents. The json module encodes objects."}]


def main() -> None:
    out, mode = Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "tensor"
    chat = edgegen.load("tiny-chat", runtime="mlx", parallel=mode)
    results = {}
    if "--idle" in sys.argv:
        time.sleep(float(sys.argv[sys.argv.index("--idle") + 1]))
        results["greedy"] = chat.generate(chat.tokenizer.encode_chat(PROMPT), max_tokens=8).token_ids
        out.write_text(json.dumps(results))
        return

    def run(name: str, messages=PROMPT, **options) -> None:
        result = chat.generate(chat.tokenizer.encode_chat(messages), max_tokens=24, **options)
        results[name] = result.token_ids
        if result.stats.distributed is not None:
            results["distributed"] = result.stats.distributed

    run("greedy")
    run("sampled", temperature=0.8, seed=7)
    run("draft-model", draft="tiny-draft")
    run("draft-q4", draft="q4")
    run("prompt-lookup", messages=COPY, draft="prompt-lookup")
    run("kv8", kv_bits=8)
    run("kv4", messages=COPY, kv_bits=4)  # PROMPT has a near-tie at its 8th token under int4 keys and values
    completion = chat.complete("The json module", drafts=3, max_tokens=8)
    results["superposed"] = [draft.token_ids for draft in completion.drafts]
    bd = edgegen.load("tiny-chat-bd", runtime="mlx", parallel=mode)
    result = bd.generate(bd.tokenizer.encode_chat(PROMPT), max_tokens=24, threshold=0.9)
    results["block-diffusion"] = result.token_ids
    results["bd-forwards"] = result.stats.forwards
    out.write_text(json.dumps(results))


if __name__ == "__main__":
    main()
