"""Hostile or careless input to the Python API, the image API, model files and the server: each is
one clear EdgegenError (the server: a 4xx in OpenAI's shape), found by an adversarial audit where
they were crashes (a segfault on a deep schema), raw exceptions, 500s or a blocked server."""

from __future__ import annotations

import json
import shutil

import httpx
import numpy as np
import pytest

import edgegen
from edgegen.core.errors import ConfigError, ContextOverflow
from edgegen.models import BUNDLED
from edgegen.server import ThreadedServer, create_app
from edgegen.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def model():
    return edgegen.load("tiny-chat")


def nested(depth: int) -> dict:
    schema = inner = {}
    for _ in range(depth):
        inner["type"], inner["properties"] = "object", {"a": {}}
        inner = inner["properties"]["a"]
    return schema


def test_generation_options_that_would_crash_or_stall_are_refused(model):
    with pytest.raises(ConfigError, match="nested more than"):  # llguidance's compiler overflowed its stack
        model.generate("x", json_schema=nested(5000), max_tokens=4)
    with pytest.raises(ConfigError, match="not valid JSON"):
        model.generate("x", json_schema="[" * 5000 + "]" * 5000, max_tokens=4)
    with pytest.raises(ConfigError, match="stop takes at most"):  # each stop string is searched at every token
        model.generate("x", stop=["ab"] * 65, max_tokens=4)
    with pytest.raises(ConfigError, match="llguidance's limits"):  # was "the output left its grammar" (500)
        model.generate("x", regex="a{1000000}", max_tokens=3)
    with pytest.raises(ConfigError, match="GenerateOptions"):
        model.generate("x", {"max_tokens": 3})


def test_a_prompt_far_past_the_context_is_refused_before_it_is_tokenized(model):
    huge = "hello world " * 900_000  # 10.8 MB: tokenized whole it took 12 s and 1 GB
    with pytest.raises(ContextOverflow, match="characters"):
        model.generate(huge, max_tokens=3)
    with pytest.raises(ContextOverflow, match="characters"):
        model.chat([{"role": "user", "content": huge}], max_tokens=3)


def test_chat_messages_in_openais_shapes_and_bad_ones(model):
    empty = model.chat([{"role": "user", "content": None}], max_tokens=3)
    parts = model.chat([{"role": "user", "content": [{"type": "text", "text": "hi"}]}], max_tokens=3)
    assert empty.stats.generated_tokens and parts.token_ids == model.chat([{"role": "user", "content": "hi"}],
                                                                           max_tokens=3).token_ids
    for messages, words in ((["hi"], "string role"), (None, "list of"), ("hi", "list of"),
                            ([{"role": "user", "content": [{"type": "image_url"}]}], "not text"),
                            ([{"role": "assistant", "content": "", "tool_calls": [{"function": "x"}]},
                              {"role": "user", "content": "hi"}], "not an object"),
                            ([{"role": "assistant", "content": "", "tool_calls": [
                                {"function": {"name": "f", "arguments": "[" * 5000 + "]" * 5000}}]},
                              {"role": "user", "content": "hi"}], "not JSON")):
        with pytest.raises(ConfigError, match=words):
            model.chat(messages, max_tokens=3)


@pytest.mark.parametrize("args, kwargs, words", [
    (([],), {}, "non-empty list"), ((3.0,), {}, "non-empty list"), ((None,), {}, "non-empty list"),
    (([float("nan")],), {}, "an id or a name"), (([True],), {}, "an id or a name"),
    (("9" * 5000,), {}, "out of range"), ((3,), {"seed": 1.5}, "--seed"), ((3,), {"seed": "1"}, "--seed"),
    ((3,), {"top_k": float("nan")}, "--top-k"), ((3,), {"cfg": None}, "--cfg"),
])
def test_bad_image_requests_are_one_error(args, kwargs, words):
    with pytest.raises(ConfigError, match=words):
        edgegen.load("tiny-var").generate(*args, **kwargs)


def test_numpy_classes_and_seeds_still_work():
    assert edgegen.load("tiny-var").generate(np.int64(3), seed=np.int64(2)).class_ids == [3]


@pytest.mark.parametrize("damage, words", [
    ({"chat_template": "{{ 1 / 0 }}"}, "cannot be rendered"),
    ({"chat_template": "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}"}, "cannot be rendered"),
    ({"chat_template": "{% include '/etc/passwd' %}"}, "cannot be rendered"),
    ({"chat_template": 5}, "not a template's text"),
    ({"chat_template": [1, 2]}, "has no chat template"),  # (a list of named templates, none of them valid)
])
def test_a_damaged_chat_template_is_one_error(tmp_path, damage, words):
    folder = tmp_path / "m"
    shutil.copytree(BUNDLED / "tiny-chat", folder, ignore=shutil.ignore_patterns("ngram", "*.safetensors"))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, **damage}))
    with pytest.raises(ConfigError, match=words):
        Tokenizer(folder).apply_chat_template([{"role": "user", "content": "hi"}])


def test_damaged_tokenizer_files_are_one_error(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(BUNDLED / "tiny-chat", folder, ignore=shutil.ignore_patterns("ngram", "*.safetensors"))
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": {"a": 1}}))
    with pytest.raises(ConfigError, match="eos_token_id"):
        Tokenizer(folder)
    (folder / "generation_config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="not valid JSON"):
        Tokenizer(folder)


def test_the_server_answers_hostile_requests_in_openais_shape(model, loopback):
    with ThreadedServer(create_app(model, model_id="tiny-chat")) as url, \
            httpx.Client(base_url=url, trust_env=False, timeout=60) as http:
        odd = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                      "max_tokens": 2, "x\ny\x00": 1})
        assert odd.status_code == 200 and "x\\ny\\x00" in odd.headers["x-edgegen-warning"]  # (a dropped connection)
        for body, param in (({"prompt": "hi", "stop": ["ab"] * 65}, "stop"),
                            ({"prompt": "hello world " * 600_000}, "prompt")):
            refused = http.post("/v1/completions", json=body)
            assert refused.status_code == 400 and refused.json()["error"]["param"] == param, refused.text
        calls = http.post("/v1/chat/completions", json={"messages": [
            {"role": "assistant", "content": "", "tool_calls": [{"function": [1]}]}, {"role": "user", "content": "hi"}]})
        assert calls.status_code == 400, calls.text
        grammar = http.post("/v1/completions", json={"prompt": "x", "regex": "a{1000000}", "max_tokens": 3})
        assert grammar.status_code == 400 and "limits" in grammar.json()["error"]["message"], grammar.text
