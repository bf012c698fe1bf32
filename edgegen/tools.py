"""Tool calls: the functions reach the prompt through the model's chat template (its `tools`
variable), the call is generated under a grammar built from the functions' parameter schemas,
and the reply is split into its text and OpenAI `tool_calls`.

Two call formats are known, picked from the chat template:

    hermes       <tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>   Qwen2.5/3, Hermes, QwQ
    llama-json   {"name": ..., "parameters": {...}}                              Llama 3.1-3.3

A template that does not mention tools (a small chat model's) gets the hermes format, described
in a system message that edgegen adds; past calls and tool results are written into the messages
the same way. A template with a tools format of its own that edgegen does not know is refused.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
from typing import Any, Iterable, Sequence

from edgegen.core.errors import ConfigError
from edgegen.core.options import OutputOptions
from edgegen.core.stats import ToolCall


@dataclasses.dataclass(frozen=True)
class ToolFormat:
    name: str
    open: str  # text before each call's JSON
    close: str  # text after it
    between: str | None  # text between two calls (None: one call per reply)
    arguments_key: str  # "arguments" or "parameters"
    native: bool  # the chat template renders the tools itself

    @property
    def trigger(self) -> str:
        """The text that starts a call in a reply that may also be prose."""
        return self.open.strip() or "{"


HERMES = ToolFormat("hermes", "<tool_call>\n", "\n</tool_call>", "\n", "arguments", True)
LLAMA_JSON = ToolFormat("llama-json", "", "", None, "parameters", True)
FALLBACK = dataclasses.replace(HERMES, native=False)

_MENTIONS_TOOLS = re.compile(r"\btools\b")


def tool_format(template: str | None) -> ToolFormat:
    """The call format of a chat template (see the module's docstring)."""
    if not template or not _MENTIONS_TOOLS.search(template):
        return FALLBACK
    if "<tool_call>" in template:
        return HERMES
    if "<|python_tag|>" in template or '"parameters"' in template:
        return LLAMA_JSON
    raise ConfigError("this model's chat template writes tool calls in a format edgegen does not read "
                      "(it reads Qwen/Hermes <tool_call> and Llama 3 JSON); call without tools")


# ---------------------------------------------------------------------------- the prompt
def _listed(messages: Any) -> list[Any]:
    if isinstance(messages, (str, bytes, dict)) or not isinstance(messages, Iterable):
        raise ConfigError(f"messages must be a list of {{role, content}} objects, got {type(messages).__name__}")
    return list(messages)


def _text_message(message: Any, i: int) -> dict[str, Any]:
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise ConfigError(f"messages[{i}] must be an object with a string role, got {message!r:.60}")
    content = message.get("content")
    if isinstance(content, list):  # OpenAI's content parts: text only
        texts = [part.get("text") if isinstance(part, dict) and part.get("type") == "text" else None for part in content]
        if any(not isinstance(t, str) for t in texts):
            raise ConfigError(f"messages[{i}].content has a part that is not text; edgegen's models read text")
        content = "".join(texts)
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise ConfigError(f"messages[{i}].content must be text, got {type(content).__name__}")
    return {**message, "content": content}


def chat_prompt(messages: Iterable[dict[str, Any]], output: OutputOptions,
                template: str | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The messages and extra template variables that render `messages` with `output`'s tools.
    Each message is {role, content} with text content, as in OpenAI's format: null content is empty
    and a list of text parts is joined."""
    messages = [_text_message(m, i) for i, m in enumerate(_listed(messages))]
    has_history = any(m.get("tool_calls") or m.get("role") == "tool" for m in messages)
    if not output.tools and not has_history:
        return messages, {}
    fmt = tool_format(template)
    offered = list(output.tools or ()) if output.calls_possible else []
    if fmt.native:
        extra = {"tools": [{"type": "function", "function": t} for t in offered]} if offered else {}
        return [_native_message(m) for m in messages], extra
    out = [_fallback_message(m, fmt) for m in messages]
    if offered:
        out = _with_system(out, _describe(offered, fmt))
    return out, {}


def _arguments(call: dict[str, Any]) -> tuple[str, Any]:
    """(name, arguments as an object) of a past call, OpenAI's shape or the template's."""
    function = call.get("function", call) if isinstance(call, dict) else {}
    if not isinstance(function, dict):
        raise ConfigError(f"a tool call in the messages has a function that is not an object: {function!r:.60}")
    name, arguments = function.get("name"), function.get("arguments", {})
    if not isinstance(name, str):
        raise ConfigError("a tool call in the messages has no function name")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except (ValueError, RecursionError):
            raise ConfigError(f"the arguments of the call to {name!r} in the messages are not JSON") from None
    return name, arguments


def _native_message(message: dict[str, Any]) -> dict[str, Any]:
    """Past calls with their arguments as objects: what chat templates (and transformers) expect."""
    calls = message.get("tool_calls")
    if not calls:
        return message
    if not isinstance(calls, list):
        raise ConfigError("tool_calls in a message must be a list")
    fixed = []
    for call in calls:
        name, arguments = _arguments(call)
        fixed.append({"type": "function", "id": call.get("id", ""), "function": {"name": name, "arguments": arguments}})
    return {**message, "tool_calls": fixed}


def _fallback_message(message: dict[str, Any], fmt: ToolFormat) -> dict[str, Any]:
    """A message for a template that knows no tools: calls written into the assistant's text,
    a tool's result sent as the user's turn."""
    calls = message.get("tool_calls")
    if calls:
        text = (message.get("content") or "")
        blocks = [fmt.open + _call_json(*_arguments(c), fmt) + fmt.close for c in calls]
        text = (text + "\n" if text else "") + "\n".join(blocks)
        return {"role": message.get("role", "assistant"), "content": text}
    if message.get("role") == "tool":
        return {"role": "user", "content": f"<tool_response>\n{message.get('content') or ''}\n</tool_response>"}
    return message


def _describe(tools: Sequence[dict[str, Any]], fmt: ToolFormat) -> str:
    listed = "\n".join(json.dumps({"type": "function", "function": t}, ensure_ascii=False) for t in tools)
    example = fmt.open + json.dumps({"name": "NAME", fmt.arguments_key: {"ARGUMENT": "VALUE"}}) + fmt.close
    return ("# Tools\n\nYou may call these functions to answer the user:\n<tools>\n" + listed + "\n</tools>\n\n"
            "To call one, reply with its name and arguments as JSON like this:\n" + example)


def _with_system(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    if messages and messages[0].get("role") == "system":
        first = messages[0]
        return [{**first, "content": f"{first.get('content') or ''}\n\n{text}".lstrip()}] + messages[1:]
    return [{"role": "system", "content": text}] + messages


def _call_json(name: str, arguments: Any, fmt: ToolFormat) -> str:
    return json.dumps({"name": name, fmt.arguments_key: arguments}, ensure_ascii=False)


# ---------------------------------------------------------------------------- the grammar
def call_grammar(output: OutputOptions, fmt: ToolFormat, layout: dict[str, Any]) -> str:
    """A Lark grammar (llguidance's dialect) for the reply `output` allows: calls only ("required"
    or a named function), or text that may turn into calls ("auto": the call grammar starts at the
    format's trigger, a lazy lexeme, so prose before it is free)."""
    choice = output.tool_choice
    tools = [t for t in output.tools or () if choice in ("auto", "required") or t["name"] == choice]
    schema = {"anyOf": [_call_schema(t, fmt) for t in tools], "x-guidance": layout}
    body = f"%json {json.dumps(schema, ensure_ascii=False)}"
    many = output.parallel_tool_calls and fmt.between is not None
    lines = ["%llguidance {}"]
    if choice != "auto":
        lines.append(f"start: call ({_lit(fmt.between)} call)*" if many else "start: call")
        lines.append("call: " + _seq(fmt.open, body, fmt.close))
    elif fmt.open:
        rest = fmt.open[len(fmt.trigger):]
        lines += [f"start: call{'*' if many else '?'} TEXT",
                  "call: trigger " + _seq(rest, body, fmt.close),
                  f"trigger[lazy]: TEXT {_lit(fmt.trigger)}",
                  "TEXT: /(.|\\n)*/"]
    else:  # a bare JSON call: the reply is either one call or text that does not start with "{"
        lines += ["start: call | TEXT", f"call: {body}", "TEXT: /([^{](.|\\n)*)?/"]
    return "\n".join(lines) + "\n"


def _call_schema(tool: dict[str, Any], fmt: ToolFormat) -> dict[str, Any]:
    parameters = tool["parameters"] or {"type": "object"}
    return {"type": "object", "properties": {"name": {"const": tool["name"]}, fmt.arguments_key: parameters},
            "required": ["name", fmt.arguments_key], "additionalProperties": False}


def _lit(text: str | None) -> str:
    return json.dumps(text or "", ensure_ascii=False)


def _seq(before: str, body: str, after: str) -> str:
    """`body` between two literals, the empty ones left out."""
    return " ".join(part for part in (_lit(before) if before else "", body, _lit(after) if after else "") if part)


# ---------------------------------------------------------------------------- the reply
class CallFilter:
    """Splits a streamed reply into its text, passed on as it comes, and its calls, held back from
    the first sign of one (the format's trigger, or a prefix of it at the end) and parsed at the end."""

    def __init__(self, fmt: ToolFormat, names: Iterable[str]):
        self.fmt, self.names = fmt, set(names)
        self.text, self.sent, self.held_from = "", 0, None

    def push(self, piece: str) -> str:
        self.text += piece
        if self.held_from is not None:
            return ""
        trigger = self.fmt.trigger
        if not self.fmt.open:  # a bare JSON call can only be the whole reply
            lead = self.text.lstrip()
            if not lead or lead.startswith(trigger):
                self.held_from = 0 if lead else None
                return ""
            return self._send(len(self.text))
        at = self.text.find(trigger, self.sent)
        if at >= 0:
            self.held_from = at
            return self._send(at)
        return self._send(len(self.text) - _partial(self.text, trigger))

    def finish(self, cut_short: bool = False) -> tuple[str, list[ToolCall]]:
        """The text not yet passed on, and the calls. `cut_short`: the reply ended at max_tokens, so
        a call it had begun is unfinished, and is neither text nor a call."""
        if self.held_from is None:
            return self._send(len(self.text)), []
        rest, calls = parse_calls(self.text[self.held_from:], self.fmt, self.names, cut_short)
        if not calls and not cut_short:  # the reply ended on its own: what did not parse is text
            return self._send(len(self.text)), []
        self.sent = len(self.text)
        return rest, calls

    def _send(self, end: int) -> str:
        out, self.sent = self.text[self.sent:end], max(self.sent, end)
        return out


def _partial(text: str, trigger: str) -> int:
    """The length of the longest end of `text` that begins `trigger`."""
    for n in range(min(len(trigger) - 1, len(text)), 0, -1):
        if trigger.startswith(text[-n:]):
            return n
    return 0


def parse_calls(text: str, fmt: ToolFormat, names: Iterable[str],
                cut_short: bool = False) -> tuple[str, list[ToolCall]]:
    """(the text outside the calls, the calls) of a reply; what does not parse as a call of a known
    function stays text, except a last call begun but not closed where other calls parsed or the
    reply was `cut_short` (ended at max_tokens): that is neither text nor a call."""
    known = set(names)
    if not fmt.open:  # a bare JSON call is the whole reply
        call = _call(text.strip(), fmt, known)
        return ("", [call]) if call else ("" if cut_short else text, [])
    pattern = re.compile(re.escape(fmt.open.strip()) + r"\s*(.*?)\s*" + re.escape(fmt.close.strip()), re.S)
    calls, kept, last = [], [], 0
    for match in pattern.finditer(text):
        call = _call(match.group(1), fmt, known)
        if call is None:
            continue
        kept.append(text[last:match.start()])
        last = match.end()
        calls.append(call)
    tail = text[last:]
    if (calls or cut_short) and fmt.open.strip() in tail:  # a last call cut short: not text either
        tail = tail[:tail.index(fmt.open.strip())]
    kept.append(tail)
    return ("".join(kept).strip() if calls or cut_short else text), calls


def _call(body: str, fmt: ToolFormat, known: set[str]) -> ToolCall | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("name") not in known:
        return None
    arguments = data.get(fmt.arguments_key, data.get("arguments", data.get("parameters", {})))
    return ToolCall(f"call_{secrets.token_hex(12)}", data["name"], json.dumps(arguments, ensure_ascii=False))
