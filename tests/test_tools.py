"""Tool calls: the functions reach the prompt as transformers renders them, forced calls carry
arguments valid under the function's schema (the `jsonschema` package checks), `auto` may
answer in text, results go back through the template, and the server speaks OpenAI's shape."""

from __future__ import annotations

import json
import shutil

import jsonschema
import openai
import pytest
from transformers import AutoTokenizer

import edgegen
from conftest import RUNTIMES
from edgegen.api.model import Model
from edgegen.core.errors import ConfigError
from edgegen.core.options import GenerateOptions, OutputOptions
from edgegen.models import BUNDLED
from edgegen.server import ThreadedServer, create_app
from edgegen.tokenizer import Tokenizer
from edgegen.tools import (FALLBACK, HERMES, LLAMA_JSON, CallFilter, call_grammar, chat_prompt, parse_calls,
                           tool_format)

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "minLength": 2, "maxLength": 20},
                                            "unit": {"enum": ["celsius", "fahrenheit"]},
                                            "days": {"type": "integer", "minimum": 1, "maximum": 7}},
           "required": ["city", "unit"], "additionalProperties": False}
ADD = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
       "required": ["a", "b"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "add", "description": "Add two integers", "parameters": ADD}}]
SCHEMAS = {"get_weather": WEATHER, "add": ADD}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]

# A chat template that renders tools itself, in the hermes format (as Qwen2.5's does).
NATIVE_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n{% if messages[0].role == 'system' %}{{ messages[0].content }}\n\n"
    "{% endif %}Functions:\n{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}"
    "Call one as <tool_call>\n{\"name\": NAME, \"arguments\": ARGS}\n</tool_call><|im_end|>\n"
    "{%- elif messages[0].role == 'system' %}<|im_start|>system\n{{ messages[0].content }}<|im_end|>\n{%- endif %}"
    "{%- for message in messages %}{%- if message.role == 'system' %}"
    "{%- elif message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant\n"
    "{%- for call in message.tool_calls %}<tool_call>\n{\"name\": \"{{ call.function.name }}\", \"arguments\": "
    "{{ call.function.arguments | tojson }}}\n</tool_call>{%- endfor %}<|im_end|>\n"
    "{%- elif message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}\n"
    "</tool_response><|im_end|>\n"
    "{%- else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)
HISTORY = ASK + [
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "{\"temperature\": 21}"},
]


@pytest.fixture(scope="module")
def onnx_model():
    return edgegen.load("tiny-chat")


@pytest.fixture(scope="module")
def native_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("native")
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "config.json"):
        shutil.copy(BUNDLED / "tiny-chat" / name, folder / name)
    (folder / "chat_template.jinja").write_text(NATIVE_TEMPLATE, encoding="utf-8")
    return folder


def check_call(call, name: str | None = None) -> None:
    assert name is None or call.name == name
    jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])
    assert call.id.startswith("call_")


# ------------------------------------------------------------------ formats, parsing, streaming

def test_the_format_comes_from_the_template():
    assert tool_format(None) == FALLBACK and tool_format("{{ messages }}") == FALLBACK
    assert tool_format(NATIVE_TEMPLATE) == HERMES
    assert tool_format("{{ tools }} <|python_tag|> {{ messages }}") == LLAMA_JSON
    with pytest.raises(ConfigError, match="format edgegen does not read"):
        tool_format("{% for t in tools %}[AVAILABLE_TOOLS]{% endfor %}")


def test_calls_are_parsed_and_the_rest_is_text():
    names = ["get_weather", "add"]
    text = 'Let me look.\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
    rest, calls = parse_calls(text, HERMES, names)
    assert rest == "Let me look." and [(c.name, json.loads(c.arguments)) for c in calls] == [("add", {"a": 1, "b": 2})]
    assert parse_calls('<tool_call>\n{"name": "nope", "arguments": {}}\n</tool_call>', HERMES, names)[1] == []
    unclosed = 'So: <tool_call>\n{"name": "add", "argu'
    assert parse_calls(unclosed, HERMES, names) == (unclosed, [])  # the reply ended so: text
    assert parse_calls(unclosed, HERMES, names, cut_short=True) == ("So:", [])  # max_tokens cut a call: dropped
    assert parse_calls('{"name": "add", "param', LLAMA_JSON, names, cut_short=True) == ("", [])
    rest, calls = parse_calls('{"name": "add", "parameters": {"a": 1, "b": 2}}', LLAMA_JSON, names)
    assert rest == "" and calls[0].name == "add"


@pytest.mark.parametrize("step", [1, 3, 200])
def test_the_stream_holds_back_only_what_may_be_a_call(step):
    text = 'Sure <b>. <tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
    f = CallFilter(HERMES, ["add"])
    shown = "".join(f.push(text[i:i + step]) for i in range(0, len(text), step))
    rest, calls = f.finish()
    assert shown + rest == "Sure <b>. " and len(calls) == 1
    plain = CallFilter(HERMES, ["add"])
    shown = "".join(plain.push(c) for c in "a <tool_ca")
    assert shown == "a " and plain.finish() == ("<tool_ca", [])
    cut = CallFilter(HERMES, ["add"])
    shown = "".join(cut.push(c) for c in 'a <tool_call>\n{"name": "add", "arg')
    assert shown == "a " and cut.finish(cut_short=True) == ("", [])


@pytest.mark.parametrize("stream", [False, True])
def test_a_call_cut_short_by_max_tokens_is_neither_text_nor_a_call(onnx_model, stream):
    """structured-output.md's promise: a reply whose only call max_tokens cut short shows no markup."""
    if stream:
        pieces = list(onnx_model.stream_chat(ASK, tools=TOOLS, tool_choice="required", max_tokens=8))
        assert pieces == [] or "".join(pieces).strip() == ""
        return
    reply = onnx_model.chat(ASK, tools=TOOLS, tool_choice="required", max_tokens=8)
    assert reply.stats.finish_reason == "length" and reply.stats.generated_tokens == 8
    assert reply.text == "" and reply.tool_calls == []


@pytest.mark.parametrize("kwargs, words", [
    ({"tools": "add"}, "non-empty list"),
    ({"tools": [{"function": {"description": "x"}}]}, "with a name"),
    ({"tools": TOOLS * 2}, "more than once"),
    ({"tools": TOOLS, "tool_choice": "nope"}, "not among the tools"),
    ({"tools": TOOLS, "tool_choice": {"type": "function"}}, "tool_choice must be"),
    ({"tool_choice": "required"}, "needs tools"),
    ({"tools": TOOLS, "json_schema": {"type": "object"}}, "not both"),
    ({"tools": [{"type": "retrieval"}]}, "only function tools"),
])
def test_bad_tools_are_one_line(kwargs, words):
    with pytest.raises(ConfigError, match=words):
        OutputOptions(**kwargs)


# ------------------------------------------------------------------ the prompt

def test_tools_reach_the_prompt_as_transformers_renders_them(native_folder):
    theirs = AutoTokenizer.from_pretrained(native_folder)
    ours = Tokenizer(native_folder)
    output = OutputOptions(tools=TOOLS)
    for messages in (ASK, [{"role": "system", "content": "Be brief."}] + ASK):
        rendered, extra = chat_prompt(messages, output, ours.chat_template)
        assert ours.apply_chat_template(rendered, **extra) == theirs.apply_chat_template(
            messages, tools=TOOLS, add_generation_prompt=True, tokenize=False)
    history = [{**m, "tool_calls": [{**c, "function": {**c["function"], "arguments": json.loads(
        c["function"]["arguments"])}} for c in m["tool_calls"]]} if m.get("tool_calls") else m for m in HISTORY]
    rendered, extra = chat_prompt(HISTORY, output, ours.chat_template)
    assert ours.apply_chat_template(rendered, **extra) == theirs.apply_chat_template(
        history, tools=TOOLS, add_generation_prompt=True, tokenize=False)
    none, extra = chat_prompt(ASK, OutputOptions(tools=TOOLS, tool_choice="none"), ours.chat_template)
    assert extra == {} and none == ASK


def test_a_template_without_tools_gets_them_in_a_system_message(onnx_model):
    prompt = onnx_model.tokenizer.decode(onnx_model.encode_chat(HISTORY, GenerateOptions.from_kwargs(tools=TOOLS)),
                                         skip_special_tokens=False)
    assert prompt.count('"name": "get_weather"') == 2 and "<tool_call>" in prompt  # offered, and called before
    assert '<tool_response>\n{"temperature": 21}\n</tool_response>' in prompt
    assert prompt.index("<tools>") < prompt.index("What is the weather")


# ------------------------------------------------------------------ generation

@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_forced_call_has_valid_arguments(runtime):
    model = edgegen.load("tiny-chat", runtime=runtime)
    seeds = [None, 0, 1, 2] if runtime == "onnx" else [None, 0]
    for seed in seeds:
        sampling = {} if seed is None else {"temperature": 1.0, "seed": seed}
        reply = model.chat(ASK, tools=TOOLS, tool_choice="required", max_tokens=120, **sampling)
        assert reply.stats.finish_reason == "tool_calls" and len(reply.tool_calls) == 1, reply.text
        check_call(reply.tool_calls[0])
        assert reply.text == ""
        named = model.chat(ASK, tools=TOOLS, tool_choice="get_weather", max_tokens=120, **sampling)
        check_call(named.tool_calls[0], "get_weather")


def test_auto_may_answer_in_text_and_none_never_calls(onnx_model):
    auto = onnx_model.chat(ASK, tools=TOOLS, max_tokens=40)
    assert auto.text or auto.tool_calls
    for call in auto.tool_calls:
        check_call(call)
    none = onnx_model.chat(ASK, tools=TOOLS, tool_choice="none", max_tokens=40)
    assert none.tool_calls == [] and none.stats.finish_reason != "tool_calls"
    assert none.token_ids == onnx_model.chat(ASK, max_tokens=40).token_ids  # tools left out of the prompt


def test_a_native_template_call_and_a_tool_result_round_trip(onnx_model, native_folder):
    model = Model(onnx_model.backend, Tokenizer(native_folder), onnx_model.manifest)
    reply = model.chat(ASK, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "add"}},
                       max_tokens=80)
    check_call(reply.tool_calls[0], "add")
    follow = model.chat(HISTORY, tools=TOOLS, tool_choice="none", max_tokens=8)
    assert follow.tool_calls == [] and follow.stats.generated_tokens > 0


@pytest.mark.parametrize("draft", ["tiny-draft", "prompt-lookup"])
def test_speculation_calls_as_plain_decoding_does(onnx_model, draft):
    plain = onnx_model.chat(ASK, tools=TOOLS, tool_choice="required", max_tokens=120)
    spec = onnx_model.chat(ASK, tools=TOOLS, tool_choice="required", max_tokens=120, draft=draft, num_draft=4)
    assert spec.token_ids == plain.token_ids and spec.stats.strategy == "speculative"
    assert [(c.name, c.arguments) for c in spec.tool_calls] == [(c.name, c.arguments) for c in plain.tool_calls]


def test_parallel_calls_only_when_asked(onnx_model):
    one = onnx_model.chat(ASK, tools=TOOLS, tool_choice="required", max_tokens=200, temperature=1.0, seed=4)
    assert len(one.tool_calls) <= 1
    assert "call (" in call_grammar(OutputOptions(tools=TOOLS, tool_choice="required", parallel_tool_calls=True),
                               HERMES, {})
    assert "call (" not in call_grammar(OutputOptions(tools=TOOLS, tool_choice="required"), HERMES, {})


# ------------------------------------------------------------------ through the server

@pytest.fixture(scope="module")
def client(onnx_model):
    with ThreadedServer(create_app(onnx_model, model_id="tiny-chat")) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def test_tool_calls_through_the_openai_client(client, loopback):
    reply = client.chat.completions.create(model="m", messages=ASK, tools=TOOLS, tool_choice="required",
                                           max_tokens=120)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    chunks = list(client.chat.completions.create(model="m", messages=ASK, tools=TOOLS, tool_choice="required",
                                                 max_tokens=120, stream=True))
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert [(d.function.name, d.function.arguments) for d in deltas] == [(call.function.name, call.function.arguments)]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert all(not (c.choices and c.choices[0].delta.content) for c in chunks)  # no markup leaks as text
    history = ASK + [choice.message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": "21 degrees"}]
    answer = client.chat.completions.create(model="m", messages=history, tools=TOOLS, tool_choice="none",
                                            max_tokens=8)
    assert answer.choices[0].message.tool_calls is None and answer.choices[0].finish_reason in ("stop", "length")
    cut = client.chat.completions.create(model="m", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=6)
    assert cut.choices[0].finish_reason == "length" and not cut.choices[0].message.content  # no markup


def test_bad_tool_requests_are_400(client, loopback):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="m", messages=ASK, tools=TOOLS, tool_choice={"type": "function",
                                       "function": {"name": "missing"}}, max_tokens=4)
    assert "not among the tools" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="m", prompt="x", max_tokens=4, extra_body={"tools": TOOLS})
    assert err.value.body["param"] == "tools"
    broken = ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "add", "arguments": "{not json"}}]}]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="m", messages=broken, max_tokens=4)
    assert "not JSON" in err.value.body["message"]
