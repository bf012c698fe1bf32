"""Stop strings over streamed text: hold back what might start one, cut at the first; and the
tokens' log-probabilities, let out as the text they make is."""

from __future__ import annotations

import collections
from typing import Any

from edgegen.core.errors import ContextOverflow

CHARS_PER_TOKEN = 32  # far above any tokenizer's average, so a prompt that fits is never refused


def text_limit(context: int) -> int:
    """The most characters a prompt for a context of `context` tokens is read or tokenized at."""
    return max(context * CHARS_PER_TOKEN, 1 << 16)


def check_text_length(chars: int, context: int) -> None:
    """Refuse, before tokenizing it, a prompt far longer than the context could hold (a 10 MB
    prompt was tokenized whole, a GB of memory, only to be refused)."""
    if chars > text_limit(context):
        raise ContextOverflow(f"the prompt has {chars:,} characters, more than the model's context of {context:,} "
                              f"tokens could take (the limit is {text_limit(context):,} characters); shorten it")


class StopText:
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


class TokenGate:
    """Lets each token's log-probability into `out` once the reply shows the token's text, so that
    a stream's chunk carries the tokens of its own text, and the tokens past a stop string, cut from
    the text, are not given. `push` takes the characters a token added to the decoded text and
    those the reply showed after it (a stop string's possible start is held back)."""

    def __init__(self, out: list[Any]):
        self.out = out
        self.waiting: collections.deque[tuple[int, int, Any]] = collections.deque()  # (start, end, entry)
        self.decoded = self.shown = 0

    def push(self, entry: Any, decoded: int, shown: int) -> None:
        self.waiting.append((self.decoded, self.decoded + decoded, entry))
        self.decoded += decoded
        self.shown += shown
        while self.waiting and self.waiting[0][0] < self.shown and self.waiting[0][1] <= self.shown:
            self.out.append(self.waiting.popleft()[2])

    def finish(self, shown: int, cut: bool) -> None:
        """The last text shown (`cut`: a stop string ended the reply); a token whose text begins
        before the cut is given, one after it is not."""
        self.shown += shown
        self.out.extend(entry for start, _, entry in self.waiting if not cut or start < self.shown)
        self.waiting.clear()
