"""Diffusion LLMs: how a checkpoint's tokens are denoised, read from its config (backend-free).

Two attention regimes cover every family (see the reference note on diffusion-LLM decoding):
block-causal models (SDAR, Fast-dLLM v2, BD3-LM: a block sees every earlier block and itself,
bidirectionally) decode block by block over an exact append-only KV cache; bidirectional models
(LLaDA, Dream) see the whole canvas and decode in semi-autoregressive blocks, where any KV reuse is
an approximation refreshed at each block start.
"""

from __future__ import annotations

import dataclasses
from typing import Any

ATTENTIONS = ("block", "full")


@dataclasses.dataclass(frozen=True)
class DiffusionSpec:
    attention: str  # "block" (block-causal) | "full" (bidirectional)
    block_size: int  # the size trained with (block-causal) or the default block (bidirectional)
    mask_token_id: int | None  # None until resolved from the tokenizer (`mask_token`) at convert time
    mask_token: str | None = None  # the mask's token text, where the config has no id (Fast-dLLM v2)
    shift: bool = False  # the prediction for position p is read from row p - 1 (Dream, Fast-dLLM v2)
    ar_first_token: bool = False  # each block's first token is decoded from the previous row (Fast-dLLM v2)
    sub_block: int = 0  # commit left to right in sub-blocks of this size (Fast-dLLM v2: 8); 0 = whole block
    rule: str = "threshold"  # the default commit rule
    threshold: float = 0.9
    cache: str = "block"  # the default cache: "block" (exact, block-causal) or dual / prefix / none

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DiffusionSpec":
        return cls(**data)
