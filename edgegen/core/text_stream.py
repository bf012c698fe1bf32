"""Text files read as streams of decoded pieces, so that a 400 MB file, a pipe or `/dev/zero` costs
one piece of memory at a time. Errors are one line (ConfigError) with the byte where UTF-8 broke."""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Callable, Iterator

from edgegen.core.errors import ConfigError

PIECE_BYTES = 1 << 20


def read_pieces(path: Path, *, what: str = "--text", piece_bytes: int = PIECE_BYTES,
                on_bytes: Callable[[int], None] = lambda n: None) -> Iterator[str]:
    """UTF-8 text of `path` in pieces of about `piece_bytes`; a leading byte-order mark is no text.
    `on_bytes` hears how many bytes each piece took (a progress bar's feed)."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="strict")
    done = 0
    try:
        with open(path, "rb") as f:
            while True:
                raw = f.read(piece_bytes)
                try:
                    text = decoder.decode(raw, final=not raw)
                except UnicodeDecodeError as exc:
                    raise ConfigError(f"{path} is not UTF-8 text ({exc.reason} at byte {done + exc.start})") from None
                done += len(raw)
                on_bytes(len(raw))
                if text:
                    yield text
                if not raw:
                    return
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist; give a UTF-8 text file with {what}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a folder; give a UTF-8 text file with {what}") from None
    except OSError as exc:
        raise ConfigError(f"{path} cannot be read ({exc.strerror})") from None


def is_regular(path: Path) -> bool:
    """A regular file (not a pipe, a device such as /dev/zero, or a socket); False if missing."""
    try:
        return path.is_file()
    except OSError:
        return False


def read_lines(path: Path, *, what: str = "--text", max_chars: int = 1 << 26,
               on_bytes: Callable[[int], None] = lambda n: None) -> Iterator[str]:
    """Whole lines of a streamed text; a line longer than `max_chars` is refused with one line."""
    rest = ""
    for piece in read_pieces(path, what=what, on_bytes=on_bytes):
        lines = (rest + piece).split("\n")
        rest = lines.pop()
        if len(rest) > max_chars:
            raise ConfigError(f"{path} has a line longer than {max_chars:,} characters; split it into lines")
        yield from lines
    if rest:
        yield rest
