"""OpenAI's request and response bodies, mapped onto edgegen's options and stats.

Pure functions over dicts: nothing here knows about HTTP or the event loop. A request body
becomes a `Request` (prompt, `GenerateOptions`, streaming flags, the fields it ignored); a
generation becomes a response body or a stream of chunks.
"""

from __future__ import annotations

import codecs
import dataclasses
import secrets
import time
from typing import Any

from edgegen.core.errors import ConfigError
from edgegen.core.options import GenerateOptions
from edgegen.core.stats import GenerationStats, TokenLogprob

# Fields each route understands itself (besides edgegen's options, `GenerateOptions.keys()`).
_SHARED = {"model", "stream", "stream_options", "n", "max_tokens", "user", "response_format", "logprobs"}
TOOL_FIELDS = ("tools", "tool_choice", "parallel_tool_calls")
CHAT_FIELDS = _SHARED | {"messages", "max_completion_tokens", "top_logprobs", *TOOL_FIELDS}
COMPLETION_FIELDS = _SHARED | {"prompt"}
MAX_TOP_LOGPROBS = 20


class ApiError(Exception):
    """An error answered as OpenAI does: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.type, self.param, self.code = status, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


@dataclasses.dataclass
class Request:
    """One parsed request: `prompt` is chat messages (chat) or text / token ids (completions)."""

    chat: bool
    prompt: Any
    options: GenerateOptions
    stream: bool = False
    include_usage: bool = False
    ignored: list[str] = dataclasses.field(default_factory=list)


def parse_request(body: Any, *, chat: bool, defaults: GenerateOptions) -> Request:
    """Check an OpenAI request body; every problem is an `ApiError` (400) naming the field."""
    if not isinstance(body, dict):
        raise bad(f"the request body must be a JSON object, got {_kind(body)}")
    body = {k: v for k, v in body.items() if v is not None}  # null means "not given"
    if isinstance(body.get("model"), (dict, list)):
        raise bad("model must be a string", "model")
    stream = _flag(body, "stream")
    stream_options = body.get("stream_options", {})
    if not isinstance(stream_options, dict):
        raise bad("stream_options must be an object", "stream_options")
    include_usage = _flag(stream_options, "include_usage", "stream_options.include_usage")
    if "stream_options" in body and not stream:  # as OpenAI answers
        raise bad("stream_options is only allowed when stream is true", "stream_options")
    n = body.get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int) or n != 1:
        raise bad(f"n must be 1 (edgegen returns one choice per request), got {n!r}", "n")
    prompt = parse_messages(body.get("messages")) if chat else parse_prompt(body.get("prompt"))
    renamed = chat and "max_completion_tokens" in body
    if renamed:  # OpenAI's newer name; it wins over max_tokens, as in vLLM
        body["max_tokens"] = body.pop("max_completion_tokens")
    known = CHAT_FIELDS if chat else COMPLETION_FIELDS
    if not chat and any(name in body for name in TOOL_FIELDS):
        raise bad("tools are offered on /v1/chat/completions, where the chat template can show them to the model",
                  next(name for name in TOOL_FIELDS if name in body))
    option_names = set(GenerateOptions.keys()) - {"logprobs"}  # OpenAI's own field of that name, below
    given = {k: v for k, v in body.items() if k in option_names}
    given.update(_response_format(body.get("response_format")))
    logprobs = _logprobs(body, chat)
    if logprobs is not None:
        given["logprobs"] = logprobs
    try:
        options = build_options(defaults, given)
    except ApiError as exc:
        if renamed and exc.param == "max_tokens":  # the field as the request named it
            raise bad(str(exc).replace("max_tokens", "max_completion_tokens"), "max_completion_tokens") from None
        raise
    ignored = sorted(k for k, v in body.items() if k not in known and k not in option_names and _set(v))
    return Request(chat, prompt, options, stream, include_usage, ignored)


def _response_format(value: Any) -> dict[str, Any]:
    """OpenAI's response_format as edgegen's output options: text (none), json_object (any JSON
    object), json_schema ({"json_schema": {"name", "schema", "strict"}}; always enforced)."""
    if value is None:
        return {}
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"json_schema": {"type": "object"}}
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema", {}) if isinstance(spec, dict) else None
        if not isinstance(schema, (dict, bool)):
            raise bad("response_format.json_schema must be an object with a \"schema\" object",
                      "response_format.json_schema")
        return {"json_schema": schema}
    raise bad("response_format.type must be text, json_object or json_schema", "response_format")


def _logprobs(body: dict[str, Any], chat: bool) -> int | None:
    """How many alternatives per token: chat has logprobs (true/false) + top_logprobs (0-20),
    completions an integer logprobs (the alternatives)."""
    if chat:
        wanted, top = body.get("logprobs", False), body.get("top_logprobs")
        if not isinstance(wanted, bool):
            raise bad(f"logprobs must be true or false, got {wanted!r}", "logprobs")
        if top is not None and not wanted:
            raise bad("top_logprobs needs logprobs: true", "top_logprobs")
        if not wanted:
            return None
        value, name = (0 if top is None else top), "top_logprobs"
    else:
        if "logprobs" not in body:
            return None
        value, name = body["logprobs"], "logprobs"
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOP_LOGPROBS:
        raise bad(f"{name} must be an integer from 0 to {MAX_TOP_LOGPROBS}, got {value!r}", name)
    return value


def build_options(defaults: GenerateOptions, given: dict[str, Any]) -> GenerateOptions:
    """`defaults` overridden by `given`; a bad value is a 400 naming the first field at fault."""
    try:
        return GenerateOptions.from_kwargs(defaults, **given)
    except ConfigError as exc:
        culprit = None
        for key, value in given.items():
            try:
                GenerateOptions.from_kwargs(defaults, **{key: value})
            except ConfigError:
                culprit = key
                break
        raise bad(str(exc), culprit) from None


def parse_messages(messages: Any) -> list[dict[str, Any]]:
    """Chat messages with text content; content given as parts is joined into one string."""
    if not isinstance(messages, list) or not messages:
        raise bad("messages must be a non-empty list of {role, content} objects", "messages")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise bad(f"{where} must be an object with a string role", where)
        content = message.get("content")
        content = "" if content is None else content
        if isinstance(content, list):
            content = "".join(_text_part(part, f"{where}.content") for part in content)
        if not isinstance(content, str):
            raise bad(f"{where}.content must be a string or a list of text parts", f"{where}.content")
        out.append({**message, "content": content})
    return out


def _text_part(part: Any, where: str) -> str:
    if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
        return part["text"]
    kind = part.get("type") if isinstance(part, dict) else _kind(part)
    raise bad(f"{where} has a part of type {kind!r}; this model reads text parts only", where)


def parse_prompt(prompt: Any) -> str | list[int]:
    """A completions prompt: text, token ids, or a one-element list of either."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return prompt
    if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, (str, list)) for p in prompt):
        raise bad("edgegen answers one prompt per request; send the prompts one by one", "prompt")
    raise bad("prompt must be a string or a non-empty list of token ids", "prompt")


def _flag(body: dict[str, Any], key: str, param: str | None = None) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise bad(f"{param or key} must be true or false, got {value!r}", param or key)
    return value


def _set(value: Any) -> bool:
    """A field worth a warning when ignored: anything but its neutral value (0, false, empty)."""
    return bool(value) if isinstance(value, (bool, int, float, str, list, dict)) else True


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(value), "null")


# ---------------------------------------------------------------------------- responses
def new_id(chat: bool) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-{secrets.token_hex(12)}"


def usage(prompt_len: int, stats: GenerationStats) -> dict[str, Any]:
    """OpenAI's usage; `cached_tokens` counts the prompt tokens served from the KV cache."""
    cached = max(prompt_len - stats.prompt_tokens, 0) if stats.prompt_tokens else 0
    return {"prompt_tokens": prompt_len, "completion_tokens": stats.generated_tokens,
            "total_tokens": prompt_len + stats.generated_tokens,
            "prompt_tokens_details": {"cached_tokens": cached}}


def finish_reason(stats: GenerationStats) -> str:
    return stats.finish_reason if stats.finish_reason in ("length", "tool_calls") else "stop"


class Shaper:
    """Builds the bodies of one response (same id, creation time and model in every chunk)."""

    def __init__(self, request: Request, model_id: str, prompt_len: int, token_bytes: Any = None):
        self.request, self.model_id, self.prompt_len = request, model_id, prompt_len
        self.id, self.created = new_id(request.chat), int(time.time())
        self.token_bytes = token_bytes  # id -> the bytes it stands for, for log-probabilities
        self.sent = 0  # log-probabilities already streamed
        self.offset, self.utf8 = 0, codecs.getincrementaldecoder("utf-8")("replace")  # text_offset's count

    def logprobs(self, entries: list[TokenLogprob]) -> dict[str, Any] | None:
        """OpenAI's logprobs object for `entries` (None when the request did not ask). A token's
        `bytes` are its own (one byte of a character split over tokens included) and `token` is
        their text, with a byte that is not whole UTF-8 written as an escape (\\xc3), so that distinct
        tokens stay distinct. `text_offset` counts characters from the reply's start, across chunks."""
        if self.request.options.output.logprobs is None:
            return None
        raw = self.token_bytes

        def text(token: int) -> str:
            return raw(token).decode("utf-8", errors="backslashreplace")

        if self.request.chat:
            def item(token: int, value: float) -> dict[str, Any]:
                return {"token": text(token), "logprob": value, "bytes": list(raw(token))}

            return {"content": [{**item(e.token, e.logprob), "top_logprobs": [item(t, v) for t, v in e.top]}
                                for e in entries], "refusal": None}
        offsets = []
        for e in entries:  # a token that ends a character split over tokens starts where it starts
            offsets.append(self.offset)
            self.offset += len(self.utf8.decode(raw(e.token)))
        return {"tokens": [text(e.token) for e in entries], "token_logprobs": [e.logprob for e in entries],
                "top_logprobs": [{text(t): v for t, v in e.top} for e in entries], "text_offset": offsets}

    def fresh(self, stats: GenerationStats, upto: int | None = None) -> list[TokenLogprob]:
        """The log-probabilities given since the last chunk (up to the `upto`th: those that came
        with the chunk's text; the generation may have decided more by the time it is sent)."""
        entries = stats.logprobs[self.sent:upto]
        self.sent += len(entries)
        return entries

    def _envelope(self, choices: list[dict[str, Any]], stream: bool) -> dict[str, Any]:
        if self.request.chat:
            kind = "chat.completion.chunk" if stream else "chat.completion"
        else:
            kind = "text_completion"
        out = {"id": self.id, "object": kind, "created": self.created, "model": self.model_id,
               "system_fingerprint": "edgegen", "choices": choices}
        if stream and self.request.include_usage:  # OpenAI: null in every chunk but the usage chunk
            out["usage"] = None
        return out

    def response(self, text: str, stats: GenerationStats) -> dict[str, Any]:
        """The whole (non-streaming) response, with edgegen's `timing` beside OpenAI's `usage`."""
        choice: dict[str, Any] = {"index": 0, "logprobs": self.logprobs(stats.logprobs),
                                  "finish_reason": finish_reason(stats)}
        if self.request.chat:
            choice["message"] = {"role": "assistant", "content": text}
            if stats.tool_calls:
                choice["message"] = {"role": "assistant", "content": text or None,
                                     "tool_calls": [call.openai() for call in stats.tool_calls]}
        else:
            choice["text"] = text
        return {**self._envelope([choice], False), "usage": usage(self.prompt_len, stats),
                "timing": stats.timing()}

    def chunk(self, text: str | None = None, *, role: bool = False, stats: GenerationStats | None = None,
              tokens: list[TokenLogprob] | None = None) -> dict[str, Any]:
        """A streamed piece of text; `role` opens a chat stream, `stats` closes the choice;
        `tokens` are the log-probabilities that came with the piece."""
        reason = finish_reason(stats) if stats is not None else None
        logprobs = self.logprobs(tokens) if tokens else None
        if self.request.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": logprobs, "finish_reason": reason}
        out = self._envelope([choice], True)
        if stats is not None:
            out["timing"] = stats.timing()
        return out

    def calls_chunk(self, stats: GenerationStats) -> dict[str, Any] | None:
        """The reply's tool calls as one delta (each call whole: they are parsed once complete);
        None when it made none."""
        if not (self.request.chat and stats.tool_calls):
            return None
        calls = [call.openai(i) for i, call in enumerate(stats.tool_calls)]
        return self._envelope([{"index": 0, "delta": {"tool_calls": calls}, "logprobs": None,
                                "finish_reason": None}], True)

    def usage_chunk(self, stats: GenerationStats) -> dict[str, Any]:
        """The last chunk when `stream_options.include_usage`: no choices, only usage."""
        return {**self._envelope([], True), "usage": usage(self.prompt_len, stats)}
