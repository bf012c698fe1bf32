"""What a generation reports: one object that every decoding strategy fills, printed by the CLI,
returned by the API and sent by the server (`timing`)."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability and the `top` most likely tokens at its position,
    (token id, log-probability) by decreasing probability."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclasses.dataclass(frozen=True)
class ToolCall:
    """A function call the model made: `arguments` is JSON text, as OpenAI returns it."""

    id: str
    name: str
    arguments: str

    def openai(self, index: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "type": "function",
                               "function": {"name": self.name, "arguments": self.arguments}}
        return out if index is None else {"index": index, **out}


@dataclasses.dataclass
class GenerationStats:
    prompt_tokens: int = 0  # tokens actually run through the model (cached prefix excluded)
    prefill_seconds: float = 0.0  # time to the first generated token
    generated_tokens: int = 0
    decode_seconds: float = 0.0  # time for tokens after the first
    peak_memory_mb: float = 0.0
    finish_reason: str = ""  # "stop" (EOS or stop string), "length", "tool_calls" or "interrupted"
    forwards: int = 0  # forward passes of the (target) model after the prompt
    drafted: int = 0  # speculative: tokens proposed by the drafter
    accepted: int = 0  # speculative: proposals the target kept
    draft_length: float = 0.0  # speculative: mean draft length per verification (0: plain decoding)
    strategy: str = "autoregressive"
    logprobs: list[TokenLogprob] = dataclasses.field(default_factory=list)  # one per generated token, if asked
    tool_calls: list[ToolCall] = dataclasses.field(default_factory=list)  # the calls the reply made, if any
    distributed: dict | None = None  # under mlx.launch: size, mode and each rank's share and peak memory

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        n = self.generated_tokens - 1
        return n / self.decode_seconds if n > 0 and self.decode_seconds else 0.0

    @property
    def tokens_per_forward(self) -> float:
        """Generated tokens per forward pass of the model (1.0 for plain decoding)."""
        return self.generated_tokens / self.forwards if self.forwards else 1.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    def timing(self) -> dict[str, Any]:
        """The `timing` object of `generate --json` and of the server's responses."""
        out = {
            "strategy": self.strategy,
            "prompt_tokens": self.prompt_tokens,
            "prefill_tokens_per_s": round(self.prefill_tokens_per_s, 2),
            "generated_tokens": self.generated_tokens,
            "decode_tokens_per_s": round(self.decode_tokens_per_s, 2),
            "peak_memory_mb": round(self.peak_memory_mb, 1),
            "finish_reason": self.finish_reason,
            "forwards": self.forwards,
            "tokens_per_forward": round(self.tokens_per_forward, 3),
        }
        if self.drafted or self.strategy == "speculative":
            out.update(acceptance_rate=round(self.acceptance_rate, 4), draft_length=round(self.draft_length, 2))
        if self.distributed is not None:
            out["distributed"] = self.distributed
        return out

    def lines(self) -> list[str]:
        """The human-readable report printed after a generation (mlx-lm's layout, plus our extras)."""
        out = [f"Prompt: {self.prompt_tokens} tokens, {self.prefill_tokens_per_s:.1f} tokens-per-sec",
               f"Generation: {self.generated_tokens} tokens, {self.decode_tokens_per_s:.1f} tokens-per-sec"]
        if self.strategy != "autoregressive":
            extra = f"{self.strategy}: {self.tokens_per_forward:.2f} tokens per forward"
            if self.drafted or self.strategy == "speculative":
                extra += f", acceptance {self.acceptance_rate:.0%}, mean draft length {self.draft_length:.1f}"
            out.append(extra)
        out.append(f"Peak memory: {self.peak_memory_mb / 1024:.3f} GB")
        if self.distributed is not None:
            d = self.distributed
            peaks = " / ".join(f"{r['peak_memory_mb'] / 1024:.3f}" for r in d["ranks"])
            out.append(f"Distributed: {d['size']} ranks, {d['mode']} parallel; peak memory per rank {peaks} GB")
        return out
