"""`edgegen serve`'s API through the official `openai` client, against a server on a free loopback
port: chat and completions, streamed or not, OpenAI's fields, edgegen's extra options, prefix
reuse across turns, API keys, and the `edgegen serve` command itself."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import httpx
import openai
import pytest
from click.testing import CliRunner

import edgegen
from edgegen.cli import main
from edgegen.core.options import GenerateOptions
from edgegen.server import ThreadedServer, create_app

pytestmark = pytest.mark.usefixtures("loopback")

QUESTION = "What does json.dumps do?"


@pytest.fixture(scope="module")
def model():
    return edgegen.load("tiny-chat")


@pytest.fixture(scope="module")
def server(model):
    with ThreadedServer(create_app(model, model_id="tiny-chat")) as url:
        yield url


def connect(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120,
                         http_client=httpx.Client(trust_env=False))


@pytest.fixture
def client(server):
    with connect(server) as c:
        yield c


def cli_json(*args: str) -> dict:
    result = CliRunner().invoke(main, ["generate", "tiny-chat", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_greedy_chat_equals_edgegen_generate(client):
    expected = cli_json("-p", QUESTION, "--temp", "0", "-m", "48")
    reply = client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": QUESTION}],
                                           temperature=0, max_tokens=48)
    assert reply.choices[0].message.content == expected["text"] and expected["text"]
    assert reply.choices[0].message.role == "assistant" and reply.object == "chat.completion"
    assert reply.choices[0].finish_reason == ("length" if len(expected["token_ids"]) == 48 else "stop")
    assert reply.usage.prompt_tokens == len(expected["prompt_ids"])
    assert reply.usage.completion_tokens == len(expected["token_ids"])
    assert reply.model == "tiny-chat"


def test_streamed_chat_equals_the_whole_reply(client):
    messages = [{"role": "user", "content": "How do I read a file line by line?"}]
    whole = client.chat.completions.create(model="tiny-chat", messages=messages, max_tokens=40)
    chunks = list(client.chat.completions.create(model="tiny-chat", messages=messages, max_tokens=40,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # streamed, not one blob
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all("usage" in c.model_fields_set and c.usage is None for c in chunks[:-1])  # null, as OpenAI sends


def test_completions_equal_edgegen_generate_raw(client):
    expected = cli_json("-p", "The json module", "--raw", "-m", "24", "--temp", "0")
    reply = client.completions.create(model="tiny-chat", prompt="The json module", max_tokens=24, temperature=0)
    assert reply.choices[0].text == expected["text"] and reply.object == "text_completion"
    streamed = client.completions.create(model="tiny-chat", prompt="The json module", max_tokens=24, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == expected["text"]
    ids = client.completions.create(model="x", prompt=expected["prompt_ids"], max_tokens=24)
    assert ids.choices[0].text == expected["text"]


def test_max_tokens_stop_and_n(client):
    long = client.chat.completions.create(model="m", messages=[{"role": "user", "content": QUESTION}],
                                          max_tokens=6, extra_body={"ignore_eos": True})
    assert long.choices[0].finish_reason == "length" and long.usage.completion_tokens == 6
    newer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": QUESTION}], max_tokens=9,
                                           max_completion_tokens=5, extra_body={"ignore_eos": True})
    assert newer.usage.completion_tokens == 5  # OpenAI's newer name wins
    full = client.completions.create(model="m", prompt="Python", max_tokens=24, extra_body={"ignore_eos": True})
    text = full.choices[0].text
    stop = text[4:7]
    cut = client.completions.create(model="m", prompt="Python", max_tokens=24, stop=[stop],
                                    extra_body={"ignore_eos": True})
    assert cut.choices[0].text == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"
    one = client.completions.create(model="m", prompt="Python", max_tokens=3, n=1)
    assert len(one.choices) == 1
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="m", prompt="Python", max_tokens=3, n=2)
    assert err.value.status_code == 400 and err.value.body["param"] == "n"


def test_seeded_sampling_is_reproducible(client):
    def ask():
        return client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Name a module"}],
                                              temperature=1.0, top_p=0.95, seed=11, max_tokens=16).choices[0]

    assert ask().message.content == ask().message.content


def test_a_growing_conversation_reruns_only_new_tokens(client):
    messages = [{"role": "user", "content": QUESTION}]
    first = client.chat.completions.create(model="m", messages=messages, max_tokens=32)
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "And json.loads?"}]
    second = client.chat.completions.create(model="m", messages=messages, max_tokens=32)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= first.usage.prompt_tokens  # the whole first prompt came from the KV cache
    assert second.model_extra["timing"]["prompt_tokens"] == second.usage.prompt_tokens - cached


def test_edgegen_options_ride_as_extra_fields(client):
    raw = client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": QUESTION}], max_tokens=8,
        extra_body={"top_k": 1, "repetition_penalty": 1.2, "min_p": 0.05, "frobnicate": 3, "logit_bias": {"5": 1}})
    reply = raw.parse()
    assert reply.choices[0].message.content
    assert raw.headers["x-edgegen-warning"] == "ignored unsupported fields: frobnicate, logit_bias"
    assert reply.model_extra["timing"]["generated_tokens"] == reply.usage.completion_tokens
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}],
                                       extra_body={"top_k": -1})
    assert err.value.body["param"] == "top_k"


@pytest.mark.skipif("draft" not in GenerateOptions.keys(), reason="this build has no speculative decoding")
def test_speculative_decoding_and_kv_bits_through_the_server(client):
    def ask(**extra):
        return client.chat.completions.create(model="m", messages=[{"role": "user", "content": QUESTION}],
                                              max_tokens=24, extra_body=extra)

    plain = ask()
    lookup = ask(draft="prompt-lookup", num_draft=3)
    assert lookup.choices[0].message.content == plain.choices[0].message.content  # lossless
    assert lookup.model_extra["timing"]["strategy"] == "speculative"
    if "kv_bits" in GenerateOptions.keys():
        assert ask(kv_bits=8).choices[0].message.content
        assert ask(kv_bits=8.0).choices[0].message.content == ask(kv_bits=8).choices[0].message.content  # JSON 8.0
        with pytest.raises(openai.BadRequestError) as err:
            ask(kv_bits=8.5)
        assert "kv_bits must be 16, 8, 4 or auto" in err.value.body["message"]
    for chosen_by_client in ("/etc", "some-org/some-model"):
        with pytest.raises(openai.BadRequestError) as err:
            ask(draft=chosen_by_client)
        assert err.value.body["param"] == "draft" and "edgegen serve --draft" in err.value.body["message"]


def test_models_health_and_the_page(client, server):
    listed = client.models.list().data
    assert [m.id for m in listed] == ["tiny-chat"] and listed[0].owned_by == "edgegen"
    assert client.models.retrieve("tiny-chat").model_extra["context_length"] > 0
    with httpx.Client(base_url=server, trust_env=False) as http:
        assert http.get("/health").json()["status"] == "ok"
        page = http.get("/")
        assert page.status_code == 200 and "chat.js" in page.text
        assert http.get("/static/chat.js").status_code == 200


def test_api_key_guards_every_route_but_health_and_the_page(model):
    with ThreadedServer(create_app(model, model_id="tiny-chat", api_key="s3cret")) as url:
        with connect(url, "wrong") as bad_client, pytest.raises(openai.AuthenticationError):
            bad_client.models.list()
        with connect(url, "s3cret") as good:
            assert good.models.list().data[0].id == "tiny-chat"
            assert good.completions.create(model="m", prompt="x", max_tokens=2).choices
        with httpx.Client(base_url=url, trust_env=False) as http:
            denied = http.post("/v1/completions", json={"prompt": "x"})
            assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"
            assert http.get("/health").status_code == 200 and http.get("/").status_code == 200


def test_serve_command_starts_answers_and_stops():
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "edgegen", "serve", "tiny-chat", "--port", "0", "--log-level", "warning"]
    # Ctrl-C as in a terminal, even where this test runs as a background job (which inherits SIGINT ignored)
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) as proc:
        try:
            line = ""
            while "serving" not in line:
                line = proc.stderr.readline()
                assert line, "edgegen serve exited before serving"
            url = line.split(" at ")[1].split("/v1")[0]
            assert url.startswith("http://127.0.0.1:")
            with connect(url) as c:
                assert c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=4).choices[0].message is not None
        finally:
            proc.send_signal(signal.SIGINT)
            rest = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130 and "interrupted" in rest, rest


def test_serve_refuses_a_taken_port_in_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["serve", "--port", str(port)])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_serve_warns_when_listening_beyond_loopback(monkeypatch):
    import edgegen.server as server

    served = []
    monkeypatch.setattr(server, "run", lambda app, sock, level: (served.append(sock), sock.close()))
    result = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0", "--port", "0"])
    assert result.exit_code == 0, result.output
    assert "warning: --host 0.0.0.0 lets anyone" in result.stderr and "--api-key" in result.stderr
    assert served and "chat page: http://127.0.0.1:" in result.stderr
    assert "answering requests addressed to 127.0.0.1, localhost, [::1]; add --allowed-host" in result.stderr
    allowed = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0", "--port", "0", "--allowed-host", "box.lan"])
    assert "addressed to 127.0.0.1, localhost, [::1], box.lan;" in allowed.stderr
    from edgegen.cli.serve import accepted_hosts

    assert accepted_hosts("192.168.1.5", ("box",)) == ["192.168.1.5", "box"]  # the address it listens on
    assert accepted_hosts("0.0.0.0", ()) == accepted_hosts("::", ()) == accepted_hosts("localhost", ()) == []


FOREIGN = ["attacker.example", "attacker.example:8080", "127.0.0.1.attacker.example", "localhost.evil:80", "",
           "127.0.0.1:80:80", "[::1]junk"]
LOCAL = ["127.0.0.1", "127.0.0.1:8080", "localhost", "LOCALHOST:1", "[::1]", "[::1]:8080"]


def test_only_requests_for_loopback_or_allowed_hosts_are_answered(model, server):
    """DNS rebinding: a page whose name points at 127.0.0.1 sends its own name as Host; 403."""
    with httpx.Client(base_url=server, trust_env=False) as http:
        for host in FOREIGN:
            for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/"),
                                 ("GET", "/health")):
                response = http.request(method, path, headers={"Host": host}, json={"messages": []})
                assert response.status_code == 403, (host, path, response.status_code)
                assert response.json()["error"]["code"] == "host_not_allowed"
        for host in LOCAL:
            assert http.get("/v1/models", headers={"Host": host}).status_code == 200, host
    app = create_app(model, model_id="tiny-chat", allowed_hosts=["Box.LAN", "10.1.2.3"])
    with ThreadedServer(app) as url, httpx.Client(base_url=url, trust_env=False) as http:
        for host in ("box.lan", "box.lan:8080", "10.1.2.3:8080", "localhost"):
            assert http.get("/health", headers={"Host": host}).status_code == 200, host
        assert http.get("/health", headers={"Host": "attacker.example"}).status_code == 403
    with ThreadedServer(create_app(model, model_id="tiny-chat", allowed_hosts=["*"])) as url, \
            httpx.Client(base_url=url, trust_env=False) as http:
        assert http.get("/health", headers={"Host": "anything.example"}).status_code == 200


def test_cross_origin_pages_only_where_allowed(model, server):
    preflight = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}
    with httpx.Client(base_url=server, trust_env=False) as http:
        denied = http.options("/v1/chat/completions", headers=preflight)
        assert "access-control-allow-origin" not in denied.headers
    app = create_app(model, model_id="tiny-chat", api_key="k", cors_origins=["http://localhost:3000"])
    with ThreadedServer(app) as url, httpx.Client(base_url=url, trust_env=False) as http:
        allowed = http.options("/v1/chat/completions", headers=preflight)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "http://localhost:3000"
        reply = http.post("/v1/completions", json={"prompt": "x", "max_tokens": 2},
                          headers={"Origin": "http://localhost:3000", "Authorization": "Bearer k"})
        assert reply.status_code == 200 and reply.headers["access-control-allow-origin"] == "http://localhost:3000"
