"""Bad requests get OpenAI-style JSON errors with the right 4xx code (never a 500 or a traceback),
and the server answers a normal request right after each one."""

from __future__ import annotations

import json

import httpx
import pytest

import edgegen
from edgegen.server import ThreadedServer, create_app

pytestmark = pytest.mark.usefixtures("loopback")

LIMIT = 64 * 1024
CHAT = "/v1/chat/completions"
DONE = "/v1/completions"
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def model():
    return edgegen.load("tiny-chat")


@pytest.fixture(scope="module")
def http(model):
    with ThreadedServer(create_app(model, model_id="tiny-chat", max_body=LIMIT)) as url:
        with httpx.Client(base_url=url, trust_env=False, timeout=120) as client:
            yield client


def raw(body: object) -> bytes:
    return json.dumps(body).encode()


BAD = {  # name: (method, path, body bytes, status, param)
    "malformed JSON": ("POST", CHAT, b'{"messages": [', 400, None),
    "not UTF-8": ("POST", CHAT, b'{"prompt": "\xff\xfe"}', 400, None),
    "a list, not an object": ("POST", DONE, b"[1, 2]", 400, None),
    "empty body": ("POST", DONE, b"", 400, None),
    "no messages": ("POST", CHAT, raw({"model": "m"}), 400, "messages"),
    "messages of the wrong type": ("POST", CHAT, raw({"messages": "hi"}), 400, "messages"),
    "a message without role": ("POST", CHAT, raw({"messages": [{"content": "hi"}]}), 400, "messages[0]"),
    "content of the wrong type": ("POST", CHAT, raw({"messages": [{"role": "user", "content": 5}]}), 400,
                                  "messages[0].content"),
    "an image part": ("POST", CHAT, raw({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "x"}}]}]}), 400, "messages[0].content"),
    "temperature as text": ("POST", CHAT, raw({"messages": HELLO, "temperature": "hot"}), 400, "temperature"),
    "stream as text": ("POST", CHAT, raw({"messages": HELLO, "stream": "yes"}), 400, "stream"),
    "stop as a number": ("POST", CHAT, raw({"messages": HELLO, "stop": 3}), 400, "stop"),
    "max_tokens as text": ("POST", DONE, raw({"prompt": "x", "max_tokens": "10"}), 400, "max_tokens"),
    "negative max_tokens": ("POST", DONE, raw({"prompt": "x", "max_tokens": -5}), 400, "max_tokens"),
    "top_p out of range": ("POST", DONE, raw({"prompt": "x", "top_p": 1.5}), 400, "top_p"),
    "a huge number": ("POST", DONE, b'{"prompt": "x", "max_tokens": 1e999}', 400, "max_tokens"),
    "n above one": ("POST", DONE, raw({"prompt": "x", "n": 3}), 400, "n"),
    "stream_options of the wrong type": ("POST", DONE, raw({"prompt": "x", "stream_options": 1}), 400,
                                         "stream_options"),
    "stream_options without stream": ("POST", CHAT, raw({"messages": HELLO, "stream_options": {"include_usage": True}}),
                                      400, "stream_options"),
    "negative max_completion_tokens": ("POST", CHAT, raw({"messages": HELLO, "max_completion_tokens": -5}), 400,
                                       "max_completion_tokens"),
    "max_completion_tokens as text": ("POST", CHAT, raw({"messages": HELLO, "max_completion_tokens": "x",
                                                         "max_tokens": 4}), 400, "max_completion_tokens"),
    "token ids outside the vocabulary": ("POST", DONE, raw({"prompt": [1, 99999999]}), 400, None),
    "a batch of prompts": ("POST", DONE, raw({"prompt": ["a", "b"]}), 400, "prompt"),
    "a prompt past the context": ("POST", DONE, raw({"prompt": [7] * 2000}), 400, "prompt"),
    "a chat past the context": ("POST", CHAT, raw({"messages": [{"role": "user", "content": "word " * 3000}]}),
                                400, "messages"),
    "a body over the limit": ("POST", DONE, raw({"prompt": "x" * (LIMIT + 10)}), 413, None),
    "an unknown route": ("GET", "/v1/engines", b"", 404, None),
    "the wrong method": ("GET", CHAT, b"", 405, None),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_request_gets_a_json_error_then_the_server_goes_on(http, case):
    method, path, body, status, param = BAD[case]
    response = http.request(method, path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and "Traceback" not in response.text
    assert error["type"] in ("invalid_request_error", "not_found_error")
    assert error["param"] == param
    after = http.post(DONE, json={"prompt": "The", "max_tokens": 2})
    assert after.status_code == 200 and after.json()["choices"][0]["finish_reason"]


@pytest.mark.parametrize("kind", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_bodies_a_web_page_could_send_cross_site_are_refused(http, kind):
    response = http.post(DONE, content=raw({"prompt": "x"}), headers={"Content-Type": kind})
    assert response.status_code == 415 and "application/json" in response.json()["error"]["message"]
    assert http.post(DONE, content=raw({"prompt": "x", "max_tokens": 2})).status_code == 200  # no type: fine


def test_context_overflow_names_openais_code(http):
    error = http.post(DONE, json={"prompt": [7] * 2000}).json()["error"]
    assert error["code"] == "context_length_exceeded" and "1024" in error["message"]


def test_a_chunked_body_over_the_limit_is_refused(http):
    def chunks():
        yield b'{"prompt": "'
        for _ in range(LIMIT // 1024 + 2):
            yield b"x" * 1024
        yield b'"}'

    response = http.post(DONE, content=chunks())
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"


class Broken:
    """The real model, except that its runtime fails after the first piece of every reply."""

    def __init__(self, model):
        self.model, self.tokenizer, self.manifest = model, model.tokenizer, model.manifest
        self.encode_chat = model.encode_chat

    def stream(self, *args, **kwargs):
        inner = self.model.stream(*args, **kwargs)

        def failing():
            try:
                yield next(inner)
                raise RuntimeError("the runtime fell over")
            finally:
                inner.close()

        return failing()


def test_a_failing_runtime_answers_500_and_keeps_serving(model):
    with ThreadedServer(create_app(Broken(model), model_id="broken")) as url, \
            httpx.Client(base_url=url, trust_env=False, timeout=120) as client:
        body = {"messages": HELLO, "max_tokens": 8, "extra": 1, "ignore_eos": True}
        whole = client.post(CHAT, json=body)
        assert whole.status_code == 500 and whole.json()["error"]["type"] == "server_error"
        assert "RuntimeError" in whole.json()["error"]["message"] and "Traceback" not in whole.text
        streamed = client.post(CHAT, json={**body, "stream": True})
        events = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
        assert json.loads(events[-2])["error"]["type"] == "server_error" and events[-1] == "[DONE]"
        assert client.get("/health").json()["status"] == "ok"


class Hungry(Broken):
    """The real model, except that its first reply runs out of memory."""

    def __init__(self, model):
        super().__init__(model)
        self.fed = False

    def stream(self, *args, **kwargs):
        if self.fed:
            return self.model.stream(*args, **kwargs)
        self.fed = True

        def starving():  # as a runtime does: the allocation fails on the worker, mid-generation
            raise MemoryError
            yield ""

        return starving()


def test_a_request_out_of_memory_answers_503_and_the_next_is_served(model):
    with ThreadedServer(create_app(Hungry(model), model_id="hungry")) as url, \
            httpx.Client(base_url=url, trust_env=False, timeout=120) as client:
        body = {"messages": HELLO, "max_tokens": 4}
        first = client.post(CHAT, json=body)
        assert first.status_code == 503 and first.json()["error"]["code"] == "out_of_memory", first.text
        assert "out of memory" in first.json()["error"]["message"] and "Traceback" not in first.text
        second = client.post(CHAT, json=body)
        assert second.status_code == 200 and second.json()["choices"][0]["finish_reason"] in ("stop", "length")
