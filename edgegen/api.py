"""The Python API: `load()` a converted model and generate, stream, chat or score with it."""

from __future__ import annotations

import dataclasses
import resource
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from edgegen.core.errors import ConfigError
from edgegen.core.manifest import Manifest
from edgegen.core.protocols import LanguageModel
from edgegen.decoding.autoregressive import GenerationStats, Session, generate
from edgegen.decoding.sampling import Sampler, SamplingParams
from edgegen.tokenizer import StreamDecoder, Tokenizer


@dataclasses.dataclass
class Generation:
    text: str
    token_ids: list[int]
    stats: GenerationStats


def load(path: str | Path, provider: str | None = None, *, device: str | None = None,
         threads: int | None = None) -> "Model":
    """Load a folder written by `edgegen convert`. `provider` picks the ONNX Runtime execution
    provider (cpu, coreml, qnn, dml, cuda, auto); `device` the MLX device (gpu, cpu, auto)."""
    folder = Path(path).expanduser()
    manifest = Manifest.read(folder)
    if manifest.runtime == "onnx":
        from edgegen.runtimes.onnx.backend import OnnxLanguageModel

        backend: LanguageModel = OnnxLanguageModel(folder, manifest, provider, threads)
    elif manifest.runtime == "mlx":
        from edgegen.runtimes.mlx.backend import MLXLanguageModel

        backend = MLXLanguageModel(folder, manifest, device)
    else:
        raise ConfigError(f"{folder} targets runtime {manifest.runtime!r}, which this edgegen cannot run")
    return Model(backend, Tokenizer(folder), manifest)


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


class Model:
    """A converted model with its tokenizer. One KV cache is kept and its longest shared prefix
    reused between calls, so a chat continues without re-reading the conversation."""

    def __init__(self, backend: LanguageModel, tokenizer: Tokenizer, manifest: Manifest):
        self.backend, self.tokenizer, self.manifest = backend, tokenizer, manifest
        self.session = Session(backend)

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """float32 logits (len(token_ids), vocab) of one fresh forward pass."""
        session = Session(self.backend)
        return session.feed(list(token_ids), last_only=False)

    def reset(self) -> None:
        self.session.reset()

    def stream(self, prompt: str | Sequence[int], *, max_tokens: int = 256, stop: Iterable[str] = (),
               ignore_eos: bool = False, stats: GenerationStats | None = None, **sampling: Any) -> Iterator[str]:
        """Yield text pieces as they are generated. `sampling`: temperature, top_p, top_k, min_p,
        repetition_penalty, seed."""
        ids = self._encode(prompt)
        stats = stats if stats is not None else GenerationStats()
        yield from self._stream_ids(ids, max_tokens, list(stop), ignore_eos, stats, sampling)

    def generate(self, prompt: str | Sequence[int], *, max_tokens: int = 256, stop: Iterable[str] = (),
                 ignore_eos: bool = False, **sampling: Any) -> Generation:
        stats = GenerationStats()
        pieces, ids = [], []
        for piece in self._stream_ids(self._encode(prompt), max_tokens, list(stop), ignore_eos, stats,
                                      sampling, token_sink=ids):
            pieces.append(piece)
        return Generation("".join(pieces), ids, stats)

    def chat(self, messages: Iterable[dict[str, Any]], **kwargs: Any) -> Generation:
        """Reply to `messages` ([{"role": ..., "content": ...}]) using the model's chat template."""
        return self.generate(self.tokenizer.encode_chat(messages), **kwargs)

    def stream_chat(self, messages: Iterable[dict[str, Any]], **kwargs: Any) -> Iterator[str]:
        return self.stream(self.tokenizer.encode_chat(messages), **kwargs)

    def _encode(self, prompt: str | Sequence[int]) -> list[int]:
        return self.tokenizer.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]

    def _stream_ids(self, ids: list[int], max_tokens: int, stop: list[str], ignore_eos: bool,
                    stats: GenerationStats, sampling: dict[str, Any], token_sink: list[int] | None = None):
        sampler = Sampler(SamplingParams(**sampling))
        decoder = StreamDecoder(self.tokenizer)
        text = _StopText(stop)
        stop_ids = () if ignore_eos else self.tokenizer.eos_token_ids
        tokens = generate(self.session, ids, sampler, max_tokens=max_tokens, stop_ids=stop_ids, stats=stats,
                          should_stop=lambda _: text.hit)
        try:
            for token in tokens:
                if token_sink is not None:
                    token_sink.append(token)
                piece = text.push(decoder.push(token))
                if piece:
                    yield piece
            tail = text.push(decoder.flush(), final=True)
            if tail:
                yield tail
        finally:
            tokens.close()
            stats.peak_memory_mb = max(peak_rss_mb(), getattr(self.backend, "peak_memory_mb", lambda: 0.0)())


class _StopText:
    """Holds back text that might be the start of a stop string; cuts at the first stop string."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.hit = False

    def push(self, piece: str, final: bool = False) -> str:
        if self.hit:
            return ""
        self.pending += piece
        cut = min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.hit = True
            out, self.pending = self.pending[:cut], ""
            return out
        hold = 0 if final else max((_overlap(self.pending, s) for s in self.stops), default=0)
        out, self.pending = self.pending[: len(self.pending) - hold], self.pending[len(self.pending) - hold:]
        return out


def _overlap(text: str, stop: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `stop`."""
    for n in range(min(len(text), len(stop) - 1), 0, -1):
        if stop.startswith(text[-n:]):
            return n
    return 0
