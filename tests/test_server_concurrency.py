"""Many clients at once: one generation at a time through a bounded queue, every reply complete
and correct, a client that leaves stops its own generation without stalling the others, and a
full queue answers 429."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import threading
import time

import httpx
import openai
import pytest

import edgegen
from edgegen.server import ThreadedServer, create_app

pytestmark = pytest.mark.usefixtures("loopback")

PROMPTS = ["What does json.dumps do?", "How do I open a file?", "What is a list?", "Explain a dict.",
           "What is asyncio?", "How do I sort a list?", "What does os.path.join do?", "What is a tuple?"]


@pytest.fixture(scope="module")
def model():
    return edgegen.load("tiny-chat")


def connect(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120,
                         http_client=httpx.Client(trust_env=False))


def ask(url: str, prompt: str, **extra) -> str:
    with connect(url) as client:
        stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}],
                                                max_tokens=32, stream=True, **extra)
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_eight_concurrent_streams_all_get_their_own_complete_reply(model):
    expected = [model.chat([{"role": "user", "content": p}], max_tokens=32).text for p in PROMPTS]
    with ThreadedServer(create_app(model, model_id="tiny-chat")) as url:
        with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
            replies = list(pool.map(lambda p: ask(url, p), PROMPTS))
    assert replies == expected and all(replies)


class Paced:
    """The real model behind a gate (closed: no reply starts) and a pause before each piece, so a
    test can act while a generation is running, whatever the machine's speed."""

    def __init__(self, model, pause: float = 0.0):
        self.model, self.tokenizer, self.manifest = model, model.tokenizer, model.manifest
        self.pause, self.gate = pause, threading.Event()
        self.gate.set()
        self.encode_chat = model.encode_chat

    def stream(self, *args, **kwargs):
        inner = self.model.stream(*args, **kwargs)

        def paced():
            try:
                self.gate.wait()
                for piece in inner:
                    time.sleep(self.pause)
                    yield piece
            finally:
                inner.close()

        return paced()


def wait_for(condition) -> None:
    for _ in range(3000):
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError("the server never reached the expected state")


def test_a_client_that_leaves_mid_stream_stops_its_generation(model):
    paced = Paced(model, pause=0.01)
    app = create_app(paced, model_id="tiny-chat")
    history = app.state.service.worker.history
    expected = model.chat([{"role": "user", "content": PROMPTS[1]}], max_tokens=32).text
    with ThreadedServer(app) as url, connect(url) as client:
        leaving = client.chat.completions.create(model="m", messages=[{"role": "user", "content": PROMPTS[0]}],
                                                 max_tokens=1000, stream=True, extra_body={"ignore_eos": True})
        pieces = [c for _, c in zip(range(3), leaving)]
        leaving.close()  # the client goes away after three chunks
        assert len(pieces) == 3
        assert ask(url, PROMPTS[1]) == expected  # the next client is served, in full
    left = history[0]
    assert left["finish_reason"] == "interrupted" and left["generated_tokens"] < left["max_tokens"] == 1000
    assert history[1]["finish_reason"] in ("stop", "length")


def test_a_client_that_leaves_while_queued_is_skipped(model):
    paced = Paced(model)
    app = create_app(paced, model_id="tiny-chat")
    worker = app.state.service.worker
    paced.gate.clear()
    with ThreadedServer(app) as url, connect(url) as client:
        running = client.completions.create(model="m", prompt="The json module", max_tokens=8, stream=True)
        queued = client.completions.create(model="m", prompt="The os module", max_tokens=8, stream=True)
        wait_for(lambda: worker.load()["waiting"] == 1)
        queued.close()
        body = json.dumps({"prompt": "x", "max_tokens": 8}).encode()
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as raw:  # a non-streaming client...
            raw.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            wait_for(lambda: worker.load()["waiting"] == 2)
        # ...that hung up while queued
        paced.gate.set()
        assert "".join(c.choices[0].text for c in running)
        wait_for(lambda: len(worker.history) == 3)
    reasons = [h["finish_reason"] for h in worker.history]
    assert reasons[0] in ("stop", "length") and reasons[1:] == ["interrupted", "interrupted"]
    assert [h["generated_tokens"] for h in worker.history][1:] == [0, 0]


def test_a_full_queue_answers_429_and_the_queued_requests_still_complete(model):
    paced = Paced(model)
    app = create_app(paced, model_id="tiny-chat", max_queue=1)
    paced.gate.clear()
    expected = [model.generate(p, max_tokens=12).text for p in ("The json", "The os")]
    with ThreadedServer(app) as url, connect(url) as client:
        first = client.completions.create(model="m", prompt="The json", max_tokens=12, stream=True)
        second = client.completions.create(model="m", prompt="The os", max_tokens=12, stream=True)
        with pytest.raises(openai.RateLimitError) as err:
            client.completions.create(model="m", prompt="The sys", max_tokens=12)
        assert err.value.status_code == 429 and err.value.body["code"] == "queue_full"
        paced.gate.set()
        texts = ["".join(c.choices[0].text for c in stream) for stream in (first, second)]
        assert texts == expected
        assert client.completions.create(model="m", prompt="The json", max_tokens=12).choices[0].text == expected[0]


def test_shutting_down_ends_open_streams_at_once(model):
    paced = Paced(model, pause=0.01)
    app = create_app(paced, model_id="tiny-chat")
    server = ThreadedServer(app)
    url = server.__enter__()
    body = {"prompt": "The", "max_tokens": 1000, "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=url, trust_env=False, timeout=120) as http, \
            http.stream("POST", "/v1/completions", json=body) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data: {"))
        server.__exit__(None, None, None)  # returns once the open stream has ended
        rest = [line[6:] for line in lines if line.startswith("data: ")]
    assert rest[-1] == "[DONE]" and json.loads(rest[-2])["error"]["code"] == "shutting_down"
    left = app.state.service.worker.history[0]
    assert left["finish_reason"] == "interrupted" and left["generated_tokens"] < 1000
