"""The chat page in a real browser: headless Chromium (Debian's package, driven by Playwright)
loads /, sends messages, and the streamed replies appear in the DOM; Stop and Reset work.
Screenshots are saved as test artefacts in .pytest_cache/artifacts/."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import pytest

import edgegen
from edgegen.server import ThreadedServer, create_app
from test_server_concurrency import Paced, wait_for

pytestmark = pytest.mark.usefixtures("loopback")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-proxy-server"]
TURNS = ["What does json.dumps do?", "And how do I read a file?", "What is a dictionary?"]


@pytest.fixture(scope="module")
def model():
    return edgegen.load("tiny-chat")


@contextlib.contextmanager
def opened(url: str):
    """A headless Chromium tab on the page at `url`."""
    if CHROMIUM is None:
        pytest.skip("no Chromium installed (Debian: apt-get install chromium); the page test needs one")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (the test extra)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)  # fresh profile
        try:
            tab = browser.new_page(viewport={"width": 1000, "height": 760})
            tab.goto(url + "/")
            yield tab
        finally:
            browser.close()


@pytest.fixture
def page(model):
    paced = Paced(model, pause=0.02)  # slow enough to catch a reply mid-stream on any machine
    app = create_app(paced, model_id="tiny-chat")
    paced.history = app.state.service.worker.history
    with ThreadedServer(app) as url, opened(url) as tab:
        tab.wait_for_function("document.getElementById('model').textContent.includes('tiny-chat')")
        yield tab, paced


def artefact(rootdir: Path, name: str) -> Path:
    folder = rootdir / ".pytest_cache" / "artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def send(tab, text: str) -> None:
    tab.fill("#prompt", text)
    tab.press("#prompt", "Enter")


def replies(tab) -> list[str]:
    return [node.text_content() for node in tab.query_selector_all(".msg.assistant .content")]


def test_the_page_streams_a_conversation(page, model, request):
    tab, _ = page
    messages = []
    for turn, text in enumerate(TURNS):
        send(tab, text)
        if turn == len(TURNS) - 1:  # catch the last reply while it streams: the screenshot of the issue
            tab.wait_for_selector(f".msg.assistant:nth-of-type({2 * turn + 2})[data-chunks]")
            tab.screenshot(path=artefact(request.config.rootpath, "page-mid-conversation.png"))
        done = tab.wait_for_selector(f".msg.assistant:nth-of-type({2 * turn + 2})[data-done]")
        messages.append({"role": "user", "content": text})
        expected = model.chat(messages).text  # the page sends the server's defaults: greedy, 256 tokens
        assert replies(tab)[-1] == expected and expected
        assert int(done.get_attribute("data-chunks")) > 1  # it arrived piece by piece
        assert "tok/s" in done.query_selector(".stats").text_content()
        messages.append({"role": "assistant", "content": expected})
    stats = tab.query_selector_all(".msg.assistant .stats")[-1].text_content()
    assert "cached" in stats and " 0 cached" not in stats  # later turns reuse the KV cache
    tab.screenshot(path=artefact(request.config.rootpath, "page-conversation.png"))


def test_stop_keeps_the_partial_reply_and_reset_clears(page, model):
    tab, paced = page
    tab.click("#settings summary")
    tab.fill("#max-tokens", "400")
    tab.fill("#system", "Answer at length.")
    paced.pause = 0.05
    send(tab, TURNS[0])
    tab.wait_for_selector(".msg.assistant[data-chunks]")
    tab.click("#send")  # the Send button reads Stop while a reply streams
    done = tab.wait_for_selector(".msg.assistant[data-done]")
    assert "stopped" in done.query_selector(".stats").text_content()
    assert tab.text_content("#send") == "Send"
    wait_for(lambda: len(paced.history) == 1)
    assert paced.history[0]["finish_reason"] == "interrupted"  # Stop ended the generation on the server
    tab.click("#reset")
    assert tab.query_selector_all(".msg") == [] and tab.is_visible("#empty")
    paced.pause = 0.0
    send(tab, TURNS[1])
    tab.wait_for_selector(".msg.assistant[data-done]")
    assert replies(tab) == [model.chat([{"role": "system", "content": "Answer at length."},
                                        {"role": "user", "content": TURNS[1]}], max_tokens=400).text]


def test_reset_mid_reply_and_a_failed_reply_leave_nothing_in_the_conversation(page, model):
    """What the page sends is what it shows: Reset while a reply streams forgets that reply too, and
    a reply that fails midway takes its question (shown as unsent) and its partial text out."""
    tab, paced = page
    sent = []
    tab.on("request", lambda r: sent.append(json.loads(r.post_data)["messages"])
           if r.url.endswith("/v1/chat/completions") else None)
    paced.pause = 0.05
    send(tab, TURNS[0])
    tab.wait_for_selector(".msg.assistant[data-chunks]")
    tab.click("#reset")
    tab.wait_for_function("!document.body.classList.contains('busy')")
    paced.pause = 0.0
    send(tab, TURNS[1])
    tab.wait_for_selector(".msg.assistant[data-done]")
    assert sent[-1] == [{"role": "user", "content": TURNS[1]}]

    real, pieces = paced.stream, []

    def failing(*args, **kwargs):
        for piece in real(*args, **kwargs):
            pieces.append(piece)
            if len(pieces) == 3:
                raise RuntimeError("the runtime failed")
            yield piece

    paced.stream = failing
    send(tab, TURNS[2])
    tab.wait_for_selector(".msg.assistant.error")
    assert tab.query_selector_all(".msg.user")[-1].get_attribute("class").split()[-1] == "unsent"
    paced.stream = real
    send(tab, "Are you there?")
    tab.wait_for_selector(".msg.assistant:nth-of-type(6)[data-done]")
    first = model.chat([{"role": "user", "content": TURNS[1]}]).text
    assert sent[-1] == [{"role": "user", "content": TURNS[1]}, {"role": "assistant", "content": first},
                        {"role": "user", "content": "Are you there?"}]


def test_the_end_of_a_long_reply_is_not_under_the_message_box(page):
    tab, _ = page
    tab.set_viewport_size({"width": 390, "height": 500})
    for text in TURNS[:2]:
        send(tab, text)
        tab.wait_for_selector(f".msg.assistant:nth-of-type({2 * TURNS.index(text) + 2})[data-done]")
    box = tab.eval_on_selector("#composer", "n => n.getBoundingClientRect().top")
    end = tab.eval_on_selector_all(".msg.assistant .stats", "ns => ns[ns.length - 1].getBoundingClientRect().bottom")
    assert end <= box, (end, box)


def test_a_keyed_server_asks_the_page_for_its_key(model):
    with ThreadedServer(create_app(model, model_id="tiny-chat", api_key="k3y")) as url, opened(url) as tab:
        tab.wait_for_function("document.getElementById('model').textContent.includes('unavailable')")
        assert tab.is_visible("#api-key")  # the page itself needed no key; the API's 401 opened the settings
        tab.fill("#api-key", "k3y")
        tab.dispatch_event("#api-key", "change")
        tab.wait_for_function("document.getElementById('model').textContent.startsWith('tiny-chat')")
        send(tab, TURNS[0])
        tab.wait_for_selector(".msg.assistant[data-done]")
        assert replies(tab) == [model.chat([{"role": "user", "content": TURNS[0]}]).text]
