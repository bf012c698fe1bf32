"""Structured output (JSON Schema, regex, Lark / GBNF grammars on llguidance) with every
autoregressive strategy, and log-probabilities: outputs validate with the `jsonschema` package,
speculation under a grammar stays lossless, logprobs equal log_softmax of the model's logits."""

from __future__ import annotations

import json
import re

import jsonschema
import numpy as np
import openai
import pytest
from click.testing import CliRunner

import edgegen
from conftest import RUNTIMES
from edgegen.cli import main
from edgegen.core.errors import ConfigError
from edgegen.core.options import SamplingParams
from edgegen.decoding import speculative
from edgegen.decoding.autoregressive import Session, generate
from edgegen.decoding.draft_length import DraftLength
from edgegen.decoding.drafters import ModelDrafter, PromptLookupDrafter
from edgegen.decoding.sampling import Sampler
from edgegen.server import ThreadedServer, create_app
from fakes import FakeModel
from test_speculative import RUNS, TV_BOUND, V, total_variation

SCHEMA = {
    "type": "object",
    "properties": {
        "module": {"type": "string", "minLength": 2, "maxLength": 16},
        "kind": {"enum": ["library", "builtin", "package"]},
        "rating": {"type": "number", "minimum": 0, "maximum": 5},
        "functions": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 1, "maxItems": 3},
        "meta": {"type": "object", "properties": {"stable": {"type": "boolean"},
                                                   "since": {"type": "integer", "minimum": 1990, "maximum": 2030}},
                 "required": ["stable", "since"], "additionalProperties": False},
    },
    "required": ["module", "kind", "functions", "meta"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Describe the json module as a JSON object."}]


@pytest.fixture(scope="module")
def onnx_model():
    return edgegen.load("tiny-chat")


def valid(text: str) -> None:
    jsonschema.validate(json.loads(text), SCHEMA)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_json_schema_outputs_always_validate(runtime):
    model = edgegen.load("tiny-chat", runtime=runtime)
    valid(model.chat(ASK, json_schema=SCHEMA, max_tokens=160).text)
    seeds = range(4) if runtime == "onnx" else range(2)  # MLX runs on the CPU here: slower
    for seed in seeds:
        reply = model.chat(ASK, json_schema=SCHEMA, max_tokens=160, temperature=1.0, seed=seed)
        assert reply.stats.finish_reason == "stop", reply.text
        valid(reply.text)


@pytest.mark.parametrize("draft", ["tiny-draft", "q4", "prompt-lookup"])
def test_speculation_under_a_schema_equals_plain_constrained_greedy(onnx_model, draft):
    plain = onnx_model.chat(ASK, json_schema=SCHEMA, max_tokens=160)
    spec = onnx_model.chat(ASK, json_schema=SCHEMA, max_tokens=160, draft=draft, num_draft=4)
    assert spec.token_ids == plain.token_ids and spec.stats.strategy == "speculative"
    valid(spec.text)


def test_regex_and_grammars(onnx_model):
    text = onnx_model.chat(ASK, regex=r"(yes|no), because [a-z ]{5,40}\.", max_tokens=60).text
    assert re.fullmatch(r"(yes|no), because [a-z ]{5,40}\.", text), text
    for grammar in ('start: "yes" | "no" | "maybe"', 'root ::= "yes" | "no" | "maybe"'):  # Lark, GBNF
        assert onnx_model.chat(ASK, grammar=grammar, max_tokens=8).text in ("yes", "no", "maybe")
    # a free object: tiny-chat greedy repeats one key until max_tokens, so its size is bounded here
    bounded = {"type": "object", "maxProperties": 2}
    assert isinstance(json.loads(onnx_model.chat(ASK, json_schema=bounded, max_tokens=80).text), dict)


@pytest.mark.parametrize("kwargs, words", [
    (dict(regex="(("), "regular expression cannot be used"),
    (dict(grammar="start: nothing"), "grammar cannot be used"),
    (dict(grammar="root ::= undefined"), "grammar cannot be used"),
    (dict(json_schema={"type": "frob"}), "JSON schema cannot be used"),
    (dict(json_schema="{not json"), "not valid JSON"),
    (dict(json_schema={"type": "object"}, regex="a"), "one output constraint"),
    (dict(json_schema={"type": "object"}, ignore_eos=True), "ignore_eos"),
    (dict(logprobs=21), "logprobs"),
])
def test_bad_constraints_are_one_line(onnx_model, kwargs, words):
    with pytest.raises(ConfigError, match=words):
        onnx_model.generate("x", max_tokens=4, **kwargs)


def test_superposed_drafts_each_stay_in_the_grammar(onnx_model):
    schema = {**SCHEMA, "properties": {k: v for k, v in SCHEMA["properties"].items() if k != "rating"}}
    done = onnx_model.complete(ASK[0]["content"], json_schema=schema, drafts=3, max_tokens=160)
    assert len(done.drafts) == 3 and len({d.text for d in done.drafts}) == 3
    for draft in done.drafts:  # (a free number may run to max_tokens in zeros: left out here)
        assert draft.finished, draft.text
        jsonschema.validate(json.loads(draft.text), schema)
    pattern = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
    dates = onnx_model.complete("The date is", regex=pattern, drafts=4, max_tokens=12).drafts
    assert len(dates) == 4 and all(re.fullmatch(pattern, d.text) and d.finished for d in dates)
    runner = CliRunner()
    out = runner.invoke(main, ["complete", "tiny-chat", "-p", "The date is", "--regex", pattern, "--json", "-m", "12"])
    assert out.exit_code == 0, out.output
    assert all(re.fullmatch(pattern, d["text"]) for d in json.loads(out.stdout)["drafts"])


def test_strategies_that_cannot_follow_a_grammar_refuse(onnx_model):
    with pytest.raises(ConfigError, match="superposed"):
        onnx_model.complete("The json", logprobs=2)
    dllm = edgegen.load("tiny-chat-bd")
    with pytest.raises(ConfigError, match="diffusion LLM"):
        dllm.generate("x", max_tokens=4, json_schema={"type": "object"})


# ------------------------------------------------------------------ the mask on fakes

class Alternating:
    """A fake constraint: the first generated token is even, then parities alternate."""

    def __init__(self, start: int):
        self.start = start

    def allowed(self, history):
        generated = list(history[self.start:])
        parity = 0 if not generated else 1 - generated[-1] % 2
        return np.arange(V) % 2 == parity

    def valid_prefix(self, history, tokens):
        context = list(history)
        for i, t in enumerate(tokens):
            if not self.allowed(context)[t]:
                return i
            context.append(t)
        return len(tokens)


PARAMS = SamplingParams(temperature=0.9, top_p=0.95, seed=5)


@pytest.mark.parametrize("kind", ["model", "self", "lookup"])
def test_greedy_speculation_with_a_mask_equals_masked_greedy(kind):
    target = FakeModel(vocab_size=V, seed=4, sharpness=1.0)
    drafter = {"model": ModelDrafter(FakeModel(vocab_size=V, seed=9), "d"), "self": ModelDrafter(target, "s"),
               "lookup": PromptLookupDrafter()}[kind]
    prompt = [1, 2, 3, 1, 2, 3, 1, 2]
    expected = list(generate(Session(target), prompt, Sampler(constraint=Alternating(len(prompt))), max_tokens=20))
    got = list(speculative.generate(Session(target), drafter, prompt, Sampler(constraint=Alternating(len(prompt))),
                                    max_tokens=20, draft_length=DraftLength(4)))
    assert got == expected and all(a % 2 != b % 2 for a, b in zip(got, got[1:])) and got[0] % 2 == 0


def test_sampled_speculation_with_a_mask_follows_the_masked_distribution():
    target, draft = FakeModel(vocab_size=V, seed=4, sharpness=1.5), FakeModel(vocab_size=V, seed=9, sharpness=1.5)
    prompt = [2, 3]
    exact_sampler = Sampler(PARAMS, Alternating(2))
    joint = np.zeros((V, V))
    p1 = exact_sampler.probs(target.table[3], prompt)
    for a in range(V):
        joint[a] = p1[a] * exact_sampler.probs(target.table[a], prompt + [a])
    counts = np.zeros((V, V))
    sampler, drafter = Sampler(PARAMS, Alternating(2)), ModelDrafter(draft, "d")  # one seeded stream for all runs
    for _ in range(RUNS):
        tokens = list(speculative.generate(Session(target), drafter, prompt, sampler, max_tokens=3,
                                           draft_length=DraftLength(3)))
        counts[tokens[0], tokens[1]] += 1
    assert total_variation(counts / RUNS, joint) < TV_BOUND


# ------------------------------------------------------------------ log-probabilities

def log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    return z - (z.max() + np.log(np.exp(z - z.max()).sum()))


@pytest.mark.parametrize("draft", [None, "prompt-lookup"])
def test_logprobs_equal_log_softmax_of_the_logits(onnx_model, draft):
    prompt = onnx_model.tokenizer.encode("The json module")
    result = onnx_model.generate(prompt, max_tokens=12, ignore_eos=True, logprobs=5, draft=draft)
    entries = result.stats.logprobs
    assert [e.token for e in entries] == result.token_ids
    logits = onnx_model.logits(prompt + result.token_ids)
    for i, entry in enumerate(entries):
        expected = log_softmax(logits[len(prompt) - 1 + i])
        assert abs(entry.logprob - expected[entry.token]) < 1e-4
        values = [v for _, v in entry.top]
        assert len(entry.top) == 5 and values == sorted(values, reverse=True)
        assert entry.top[0][0] == entry.token  # greedy: the chosen token is the most likely
        for token, value in entry.top:
            assert abs(value - expected[token]) < 1e-4


def test_logprobs_under_a_grammar_come_from_the_masked_distribution(onnx_model):
    result = onnx_model.chat(ASK, grammar='start: "yes" | "no"', max_tokens=4, logprobs=3)
    first = result.stats.logprobs[0]
    texts = {onnx_model.tokenizer.decode([t]) for t, _ in first.top}
    assert first.top[0][0] == first.token and texts <= {"y", "n", "yes", "no"}  # nothing outside the grammar
    assert np.isfinite(first.logprob) and result.text in ("yes", "no")


def test_cli_json_schema_and_logprobs(tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    result = CliRunner().invoke(main, ["generate", "-p", "Describe the json module", "--json-schema", str(schema),
                                       "-m", "160", "--json", "--logprobs", "2"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    valid(out["text"])
    assert len(out["logprobs"]) == len(out["token_ids"])
    assert out["logprobs"][0]["logprob"] == 0.0 and len(out["logprobs"][0]["top_logprobs"]) == 1  # "{" is forced
    assert max(len(e["top_logprobs"]) for e in out["logprobs"]) == 2
    bad = CliRunner().invoke(main, ["generate", "-p", "x", "--regex", "(("])
    assert bad.exit_code == 2 and bad.stderr.count("\n") == 1 and "regular expression" in bad.stderr


# ------------------------------------------------------------------ through the server

@pytest.fixture(scope="module")
def client(onnx_model):
    with ThreadedServer(create_app(onnx_model, model_id="tiny-chat")) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def test_response_format_through_the_openai_client(client, loopback):
    for stream in (False, True):
        fmt = {"type": "json_schema", "json_schema": {"name": "module", "schema": SCHEMA, "strict": True}}
        if stream:
            chunks = client.chat.completions.create(model="m", messages=ASK, max_tokens=160, response_format=fmt,
                                                    stream=True)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            text = client.chat.completions.create(model="m", messages=ASK, max_tokens=160, response_format=fmt,
                                                  temperature=0.8, seed=1).choices[0].message.content
        valid(text)
    reply = client.chat.completions.create(model="m", messages=ASK, max_tokens=80, temperature=0.8, seed=1,
                                           response_format={"type": "json_object"})  # (greedy loops on one key)
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


def test_logprobs_through_the_openai_client(client, loopback):
    reply = client.chat.completions.create(model="m", messages=ASK, max_tokens=6, logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens and len(content[0].top_logprobs) == 3
    assert "".join(c.token for c in content) == reply.choices[0].message.content
    streamed = client.chat.completions.create(model="m", messages=ASK, max_tokens=6, logprobs=True, stream=True)
    tokens = [t for c in streamed if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.logprob for t in tokens] == [c.logprob for c in content]
    done = client.completions.create(model="m", prompt="The json module", max_tokens=5, logprobs=2)
    assert len(done.choices[0].logprobs.token_logprobs) == 5 and len(done.choices[0].logprobs.top_logprobs[0]) == 2
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="m", messages=ASK, max_tokens=2, top_logprobs=2)
    assert err.value.body["param"] == "top_logprobs"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="m", messages=ASK, max_tokens=2, response_format={"type": "xml"})
    assert err.value.body["param"] == "response_format"


def test_each_streamed_chunk_carries_its_own_tokens_logprobs(client, loopback):
    """A chunk's logprobs are those of the tokens whose text it carries, however fast the worker
    runs ahead (they were once read from the live list as the chunk went out), and a streamed
    completion's text_offset counts on across chunks as in the whole response."""
    for _ in range(3):
        chunks = [c for c in client.chat.completions.create(model="m", messages=ASK, max_tokens=60, logprobs=True,
                                                            stream=True, temperature=0.9, seed=3) if c.choices]
        for c in chunks:
            given = c.choices[0].logprobs.content if c.choices[0].logprobs else []
            assert "".join(t.token for t in given) == (c.choices[0].delta.content or ""), c
    whole = client.completions.create(model="m", prompt="The json module", max_tokens=40, logprobs=1)
    streamed = client.completions.create(model="m", prompt="The json module", max_tokens=40, logprobs=1, stream=True)
    offsets = [o for c in streamed if c.choices and c.choices[0].logprobs for o in c.choices[0].logprobs.text_offset]
    assert offsets == whole.choices[0].logprobs.text_offset
    text = whole.choices[0].text
    assert [text[o:].startswith(t) for o, t in zip(offsets, whole.choices[0].logprobs.tokens)] == [True] * 40


def test_logprobs_give_a_split_characters_own_bytes(client, loopback):
    """tiny-chat writes é as two byte tokens: each one's bytes are its own (not U+FFFD's), its token
    text escapes the lone byte, so the two stay distinct keys in a completion's top_logprobs."""
    reply = client.chat.completions.create(model="m", messages=ASK, max_tokens=4, logprobs=True, top_logprobs=2,
                                           extra_body={"regex": "é"})
    content = reply.choices[0].logprobs.content
    assert reply.choices[0].message.content == "é"
    assert [c.bytes for c in content] == [[0xC3], [0xA9]] and [c.token for c in content] == ["\\xc3", "\\xa9"]
    done = client.completions.create(model="m", prompt="Caf", max_tokens=4, logprobs=1, extra_body={"regex": "é"})
    assert done.choices[0].logprobs.tokens == ["\\xc3", "\\xa9"] and done.choices[0].logprobs.text_offset == [0, 0]


def test_logprobs_stop_where_the_text_does(onnx_model):
    """A stop string cuts the text, and the tokens after the cut are not given either."""
    free = onnx_model.chat(ASK, max_tokens=24, logprobs=0)
    words = free.text.split(" ")
    assert len(words) > 4
    stop = " " + words[3]
    cut = onnx_model.chat(ASK, max_tokens=24, logprobs=0, stop=[stop])
    assert cut.text == free.text[:free.text.index(stop)] and cut.stats.finish_reason == "stop"
    pieces = b"".join(onnx_model.tokenizer.piece(e.token) for e in cut.stats.logprobs).decode()
    assert pieces.lstrip() == cut.text.lstrip()  # (a reply's first word loses its space in the text)
    assert len(cut.stats.logprobs) < cut.stats.generated_tokens


def test_a_tokens_logprob_waits_while_its_text_may_start_a_stop_string():
    """TokenGate beside StopText: held-back text holds its tokens back; at a stop string, the
    tokens whose text begins before the cut are given and the rest are not."""
    from edgegen.api.text import StopText, TokenGate

    def run(tokens: list[str], stops: list[str]) -> list[tuple[str, list[str]]]:
        given: list[str] = []
        text, gate, out = StopText(stops), TokenGate(given), []
        for token in tokens:
            shown = text.push(token)
            gate.push(token, len(token), len(shown))
            out.append((shown, list(given)))
            if text.hit:
                break
        gate.finish(len(text.push("", final=True)), cut=text.hit)
        return out + [("", given)]

    assert run(["x", "a", "c"], ["ab"]) == [("x", ["x"]), ("", ["x"]), ("ac", ["x", "a", "c"]), ("", ["x", "a", "c"])]
    assert run(["x", "a", "b", "y"], ["ab"]) == [("x", ["x"]), ("", ["x"]), ("", ["x"]), ("", ["x"])]
    assert run(["x", "ya", "b"], ["ab"]) == [("x", ["x"]), ("y", ["x"]), ("", ["x"]), ("", ["x", "ya"])]  # straddles
    assert run(["x", "a"], ["ab"])[-1] == ("", ["x", "a"])  # the held text ends the reply: given
