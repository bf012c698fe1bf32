"""Tokenizers and chat templates read from a Hugging Face folder, without transformers.

`tokenizer.json` goes through the `tokenizers` library; a folder with only a SentencePiece
`tokenizer.model` goes through `sentencepiece`. Chat templates are rendered with jinja2 in a
sandbox, the way `transformers.apply_chat_template` renders them.
"""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from edgegen.core.errors import ConfigError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "chat_template.json", "generation_config.json")
STREAM_CHUNK = 1 << 16  # characters `encode_stream` encodes at a time
_LOOKAHEAD = 256  # characters kept after a cut, so the boundary test sees what follows


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                          "restore the file or convert the model again") from None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(_read_text(path))
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"{path} is not valid JSON ({str(exc)[:200]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} does not hold a JSON object; restore the file or convert the model again")
    return data


def clean_text(text: str) -> str:
    """`text` as valid Unicode: bytes that were not UTF-8 (command-line arguments decoded with
    surrogateescape) and lone surrogates become U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape" if _escaped_only(text) else "surrogatepass") \
            .decode("utf-8", "replace")


def _escaped_only(text: str) -> bool:
    return all(not 0xD800 <= ord(ch) <= 0xDFFF or 0xDC80 <= ord(ch) <= 0xDCFF for ch in text)


def _token_text(value: Any) -> str | None:
    """`bos_token` etc. may be a string or a serialized AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _chat_template(folder: Path, config: dict[str, Any]) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return _read_text(jinja)
    template = config.get("chat_template") or _read_json(folder / "chat_template.json").get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if template is not None and not isinstance(template, str):
        raise ConfigError(f"{folder}'s chat_template is a {type(template).__name__}, not a template's text; "
                          "restore tokenizer_config.json")
    return template


class Tokenizer:
    """Encode, decode and render chat prompts for one model folder."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        self.config = _read_json(folder / "tokenizer_config.json")
        self.config.update({k: v for k, v in _read_json(folder / "special_tokens_map.json").items()
                            if k not in self.config})
        self._backend = _open_backend(folder, self.config)
        self.chat_template = _chat_template(folder, self.config)
        self.special_tokens = {k: _token_text(v) for k, v in self.config.items()
                               if k.endswith("_token") and _token_text(v) is not None}
        self.bos_token_id = self._id_of(self.special_tokens.get("bos_token"))
        self.eos_token_ids = self._eos_ids(_read_json(folder / "generation_config.json"))

    def _id_of(self, token: str | None) -> int | None:
        return None if token is None else self._backend.token_to_id(token)

    def _eos_ids(self, generation: dict[str, Any]) -> tuple[int, ...]:
        ids = generation.get("eos_token_id")
        ids = [] if ids is None else [ids] if isinstance(ids, int) else ids
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise ConfigError(f"generation_config.json's eos_token_id must be a token id or a list of them, got "
                              f"{generation.get('eos_token_id')!r:.60}; restore the file")
        own = self._id_of(self.special_tokens.get("eos_token"))
        if own is not None and own not in ids:
            ids.append(own)
        return tuple(int(i) for i in ids)

    @property
    def vocab_size(self) -> int:
        return self._backend.vocab_size()

    def vocabulary(self) -> dict[str, int]:
        """token text -> id for the whole vocabulary (added and special tokens included)."""
        return self._backend.vocabulary()

    def token_id(self, token: str) -> int | None:
        """The id of a token's text, or None when the vocabulary lacks it."""
        return self._id_of(token)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return self._backend.encode(clean_text(text), add_special_tokens)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self._backend.decode(list(ids), skip_special_tokens)

    def backend_json(self) -> str | None:
        """The `tokenizers` library's JSON of this tokenizer, or None for a SentencePiece model."""
        return self._backend.tok.to_str() if isinstance(self._backend, _HFTokenizers) else None

    def token_bytes(self) -> tuple[list[bytes], list[int]]:
        """Each id's bytes (b"" for control tokens) and the ids of special tokens: how a grammar
        engine sees a SentencePiece vocabulary."""
        return self._backend.token_bytes()

    def piece(self, token: int) -> bytes:
        """The bytes one token stands for, alone: part of a character for a byte token (where
        `decode([token])` gives U+FFFD), a special token's name; b"" for an id past the vocabulary."""
        if not 0 <= token < self.vocab_size:
            return b""
        return self._backend.piece(token)

    def apply_chat_template(self, messages: Iterable[dict[str, Any]], *, add_generation_prompt: bool = True,
                            **kwargs: Any) -> str:
        """The prompt string for `messages`, equal to transformers' `apply_chat_template(tokenize=False)`."""
        if not self.chat_template:
            raise ConfigError("this model has no chat template (tokenizer_config.json has no chat_template); "
                              "use `edgegen generate` with a plain prompt instead")
        from jinja2 import TemplateError

        try:
            template = _compile_template(self.chat_template)
            return template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                   **self.special_tokens, **kwargs)
        except MemoryError:
            raise
        except (TemplateError, ArithmeticError, LookupError, RecursionError, TypeError, ValueError,
                AttributeError) as exc:  # a broken template fails in any of these ways while it renders
            raise ConfigError(f"the model's chat template cannot be rendered ({type(exc).__name__}: "
                              f"{str(exc)[:200]}); fix chat_template in tokenizer_config.json (or "
                              "chat_template.jinja), or use --raw") from None

    def encode_chat(self, messages: Iterable[dict[str, Any]], **kwargs: Any) -> list[int]:
        # A rendered template already carries its special tokens (transformers does the same).
        return self.encode(self.apply_chat_template(messages, **kwargs), add_special_tokens=False)

    def encode_stream(self, pieces: Iterable[str], *, add_special_tokens: bool = True,
                      chunk_chars: int = STREAM_CHUNK) -> Iterator[int]:
        """The ids of the concatenated `pieces`, one at a time (see `encode_chunks`)."""
        for ids in self.encode_chunks(pieces, add_special_tokens=add_special_tokens, chunk_chars=chunk_chars):
            yield from ids

    def encode_chunks(self, pieces: Iterable[str], *, add_special_tokens: bool = True,
                      chunk_chars: int = STREAM_CHUNK) -> Iterator[list[int]]:
        """The ids of the concatenated `pieces`, encoded about `chunk_chars` characters at a time, so
        that memory follows the chunk, not the text. Chunks end where tokenizers do not merge across
        (after a line break before a visible character, else before a space between words) and are
        encoded behind the end of the previous chunk as left context, whose own tokens are dropped;
        the ids equal `encode` of the whole text, except where a text has no such boundary for
        `chunk_chars` characters (there a chunk ends mid-run, as it must to stay bounded)."""
        pending, context, first = "", "", True
        for piece in pieces:
            pending += piece
            while len(pending) >= chunk_chars + _LOOKAHEAD:
                cut = _cut_point(pending, chunk_chars)
                yield self._encode_after(context, pending[:cut], add_special_tokens if first else False)
                context, pending, first = _context_tail(pending[:cut]), pending[cut:], False
        if pending or first:
            yield self._encode_after(context, pending, add_special_tokens if first else False)

    def _encode_after(self, context: str, text: str, special: bool) -> list[int]:
        if not context:
            return self.encode(text, add_special_tokens=special)
        before = self.encode(context, add_special_tokens=False)
        both = self.encode(context + text, add_special_tokens=False)
        same = next((i for i, (a, b) in enumerate(zip(before, both)) if a != b), min(len(before), len(both)))
        return both[same:]


def _cut_point(text: str, limit: int) -> int:
    """Where to end a chunk of `text` (at most `limit` characters, at least half of it): after a
    line break that a visible character follows, else before a space between two words, else
    at `limit`."""
    low = limit // 2
    at = text.rfind("\n", low, limit - 1)
    while at >= low:
        if not text[at + 1].isspace():
            return at + 1
        at = text.rfind("\n", low, at)
    at = text.rfind(" ", low, limit - 1)
    while at > low:
        if not text[at - 1].isspace() and not text[at + 1].isspace():
            return at
        at = text.rfind(" ", low, at)
    return limit


def _context_tail(text: str, size: int = 128) -> str:
    """The end of an encoded chunk, from a boundary of the same kind, as left context for the next."""
    start = len(text) - size
    if start <= 0:
        return text
    cut = _cut_point(text[start:], size)
    return text[start + cut:] if cut < size else ""


def _compile_template(source: str):
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ConfigError(f"the chat template refused the conversation: {message}")

    def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None,
               sort_keys: bool = False) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env.from_string(source)


class _HFTokenizers:
    def __init__(self, path: Path):
        from tokenizers import Tokenizer as _Tok

        try:
            self.tok = _Tok.from_file(str(path))
        except Exception as exc:  # the library raises a bare Exception on malformed files
            raise ConfigError(f"{path} could not be read as a tokenizer ({exc})") from None
        self._bytes = None  # llguidance's view of the vocabulary, made when a token's bytes are first asked

    def token_to_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def vocabulary(self) -> dict[str, int]:
        return self.tok.get_vocab(with_added_tokens=True)

    def encode(self, text: str, special: bool) -> list[int]:
        return self.tok.encode(text, add_special_tokens=special).ids

    def decode(self, ids: list[int], skip: bool) -> str:
        return self.tok.decode(ids, skip_special_tokens=skip)

    def piece(self, token: int) -> bytes:
        if self._bytes is None:  # llguidance reads every decoder tokenizers has (byte-level, byte fallback)
            import llguidance

            self._bytes = llguidance.LLTokenizer(self.tok.to_str(), n_vocab=self.vocab_size())
        return self._bytes.decode_bytes([token])


class _SentencePiece:
    """A bare `tokenizer.model`, encoded the way transformers' LlamaTokenizer treats it: special and
    user-defined tokens are split out first, the text between them is not normalized, and only
    the text at the very start gets SentencePiece's dummy-prefix space."""

    def __init__(self, path: Path, config: dict[str, Any]):
        prefix = config.get("add_prefix_space")  # transformers' override of the model's own setting
        self.sp, proto = _sentencepiece(path, None if prefix is None else bool(prefix))
        self.sp_inner = _sentencepiece(path, False)[0]
        self.add_bos = bool(config.get("add_bos_token", True))
        self.add_eos = bool(config.get("add_eos_token", False))
        kinds = (proto.SentencePiece.CONTROL, proto.SentencePiece.USER_DEFINED)
        specials = [p.piece for p in proto.pieces if p.type in kinds and p.piece]
        pattern = "|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True))
        self._split = re.compile(f"({pattern})") if pattern else None

    def token_to_id(self, token: str) -> int | None:
        i = self.sp.PieceToId(token)
        return None if i == self.sp.unk_id() and token != self.sp.IdToPiece(i) else i

    def vocab_size(self) -> int:
        return self.sp.GetPieceSize()

    def vocabulary(self) -> dict[str, int]:
        return {self.sp.IdToPiece(i): i for i in range(self.sp.GetPieceSize())}

    def encode(self, text: str, special: bool) -> list[int]:
        ids: list[int] = []
        parts = self._split.split(text) if self._split else [text]
        for index, part in enumerate(parts):
            if index % 2:  # a special token
                ids.append(self.sp.PieceToId(part))
            elif part:
                prefix = index == 0 and not part.startswith(" ")  # as Metaspace(prepend_scheme="first")
                ids.extend((self.sp if prefix else self.sp_inner).EncodeAsIds(part))
        if special and self.add_bos and self.sp.bos_id() >= 0:
            ids = [self.sp.bos_id()] + ids
        if special and self.add_eos and self.sp.eos_id() >= 0:
            ids = ids + [self.sp.eos_id()]
        return ids

    def token_bytes(self) -> tuple[list[bytes], list[int]]:
        special = [i for i in range(self.sp.GetPieceSize()) if self.sp.IsControl(i) or self.sp.IsUnknown(i)]
        skip = set(special)
        return [b"" if i in skip else self.piece(i) for i in range(self.sp.GetPieceSize())], special

    def piece(self, token: int) -> bytes:
        piece = self.sp.IdToPiece(token)
        if self.sp.IsByte(token):
            return bytes([int(piece[3:5], 16)])  # <0xNN>
        if self.sp.IsControl(token) or self.sp.IsUnknown(token):
            return piece.encode("utf-8")
        return piece.replace("\u2581", " ").encode("utf-8")

    def decode(self, ids: list[int], skip: bool) -> str:
        if skip:
            ids = [i for i in ids if not (self.sp.IsControl(i) or self.sp.IsUnknown(i))]
        return self.sp.DecodeIds(ids)


def _sentencepiece(path: Path, dummy_prefix: bool | None):
    """The model with normalization off; `dummy_prefix` None keeps the model's own setting."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    proto = model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
        spec = proto.normalizer_spec
        spec.name, spec.precompiled_charsmap = "identity", b""
        spec.remove_extra_whitespaces = False
        if dummy_prefix is not None:
            spec.add_dummy_prefix = dummy_prefix
        sp = spm.SentencePieceProcessor()
        sp.LoadFromSerializedProto(proto.SerializeToString())
    except Exception as exc:  # protobuf DecodeError or sentencepiece's RuntimeError
        raise ConfigError(f"{path} could not be read as a SentencePiece model ({exc})") from None
    return sp, proto


def _open_backend(folder: Path, config: dict[str, Any]):
    if (folder / "tokenizer.json").is_file():
        return _HFTokenizers(folder / "tokenizer.json")
    if (folder / "tokenizer.model").is_file():
        return _SentencePiece(folder / "tokenizer.model", config)
    raise ConfigError(f"{folder} has no tokenizer (tokenizer.json or tokenizer.model); "
                      "copy the tokenizer files of the checkpoint next to config.json")


def has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or (folder / "tokenizer.model").is_file()


class StreamDecoder:
    """Turns a growing list of token ids into text pieces without splitting characters.

    Decodes a short window ending at the newest token and emits only text that is final: a piece
    ending in U+FFFD (half of a multi-byte character) is held back until the next token completes it.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix = 0  # window start
        self._read = 0  # ids already emitted

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prev = self.tokenizer.decode(self.ids[self._prefix:self._read])
        text = self.tokenizer.decode(self.ids[self._prefix:])
        if len(text) > len(prev) and not text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return text[len(prev):]
        return ""

    def flush(self) -> str:
        prev = self.tokenizer.decode(self.ids[self._prefix:self._read])
        text = self.tokenizer.decode(self.ids[self._prefix:])
        self._prefix = self._read = len(self.ids)
        return text[len(prev):]
