"""Our tokenizer and chat-template rendering against transformers on the same files."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from edgegen.models import BUNDLED
from edgegen.tokenizer import StreamDecoder, Tokenizer

TEXTS = ["Hello, world!", "  leading spaces and\ttabs\n\nnew lines", "Ünïcödé — ☃ 日本語 🙂",
         "<|im_start|>user\nhi<|im_end|>", ""]

# A template in the style of real checkpoints: system prompt handling, loop controls, exceptions.
RICH_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set system = 'You are helpful.' %}"
    "{%- set loop_messages = messages %}{%- endif %}"
    "{{- bos_token + '<|im_start|>system\\n' + system + '<|im_end|>\\n' }}"
    "{%- for message in loop_messages %}"
    "{%- if message['role'] not in ['user', 'assistant'] %}{{ raise_exception('bad role') }}{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " What is 2+2? "},
            {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}]


@pytest.fixture(scope="module")
def folder(checkpoints):
    return checkpoints("qwen2")[0]


@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_match_transformers(folder, text):
    ours, theirs = Tokenizer(folder), AutoTokenizer.from_pretrained(folder)
    ids = ours.encode(text)
    assert ids == theirs.encode(text)
    assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True) == text.replace(
        "<|im_start|>", "").replace("<|im_end|>", "")


def test_chat_template_equals_apply_chat_template(folder):
    ours, theirs = Tokenizer(folder), AutoTokenizer.from_pretrained(folder)
    for gen in (True, False):
        assert ours.apply_chat_template(MESSAGES, add_generation_prompt=gen) == theirs.apply_chat_template(
            MESSAGES, add_generation_prompt=gen, tokenize=False)


def test_rich_chat_template_equals_apply_chat_template(folder, tmp_path):
    theirs = AutoTokenizer.from_pretrained(folder)
    theirs.chat_template = RICH_TEMPLATE
    theirs.save_pretrained(tmp_path)
    ours, theirs = Tokenizer(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    for messages in (MESSAGES, MESSAGES[1:]):
        expected = theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert ours.apply_chat_template(messages) == expected
        assert ours.encode_chat(messages) == theirs.apply_chat_template(messages, add_generation_prompt=True,
                                                                        tokenize=True, return_dict=False)


def test_stream_decoder_pieces_join_to_the_full_text(folder):
    tok = Tokenizer(folder)
    text = "Ünïcödé — ☃ 日本語 🙂 and plain words"
    decoder = StreamDecoder(tok)
    pieces = [decoder.push(i) for i in tok.encode(text)] + [decoder.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_special_token_ids_come_from_the_files(folder):
    tok = Tokenizer(folder)
    assert tok.eos_token_ids == (tok.encode("<|im_end|>", add_special_tokens=False)[0],)


SP_TEXTS = TEXTS + [" x", "x ", "a  b", "</s> then <s>x", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"]


@pytest.fixture(scope="module")
def sentencepiece_folder(tmp_path_factory):
    from checkpoints import train_sentencepiece

    folder = tmp_path_factory.mktemp("sp")
    train_sentencepiece(folder)
    return folder


@pytest.mark.parametrize("text", SP_TEXTS)
def test_sentencepiece_model_matches_transformers(sentencepiece_folder, text):
    """A folder with only tokenizer.model: same ids and text as transformers' LlamaTokenizer."""
    ours, theirs = Tokenizer(sentencepiece_folder), AutoTokenizer.from_pretrained(sentencepiece_folder)
    ids = ours.encode(text)
    assert ids == theirs.encode(text)
    assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True)


def test_sentencepiece_chat_prompt_matches_transformers(sentencepiece_folder):
    ours, theirs = Tokenizer(sentencepiece_folder), AutoTokenizer.from_pretrained(sentencepiece_folder)
    messages = MESSAGES[1:]
    assert ours.encode_chat(messages) == theirs.apply_chat_template(messages, add_generation_prompt=True,
                                                                    tokenize=True, return_dict=False)


STREAM_TEXT = ("def f(x):\n    return x  *  2\n\n\nThe json module — «encodes» Python objects.  Twice  spaced.\n"
               "<|im_start|>user\nhi<|im_end|>\n" "naïve 日本語テキスト\ttab\r\nwindows line\n") * 40


@pytest.mark.parametrize("chunk", [40, 150, 1000])
@pytest.mark.parametrize("kind", ["tokenizer.json", "tokenizer.model"])
def test_encoding_in_chunks_equals_encoding_the_whole_text(sentencepiece_folder, kind, chunk):
    """What `perplexity` and `ngram build` stream: chunked ids equal the whole text's, BOS once."""
    tok = Tokenizer(sentencepiece_folder if kind == "tokenizer.model" else BUNDLED / "tiny-chat")
    pieces = [STREAM_TEXT[i:i + 97] for i in range(0, len(STREAM_TEXT), 97)]
    for special in (True, False):
        chunks = list(tok.encode_chunks(pieces, add_special_tokens=special, chunk_chars=chunk))
        assert len(chunks) > 3
        assert [i for c in chunks for i in c] == tok.encode(STREAM_TEXT, add_special_tokens=special)
    assert list(tok.encode_stream([])) == tok.encode("")


@pytest.mark.parametrize("kind", ["byte-level", "byte-fallback", "tokenizer.model"])
def test_each_tokens_bytes_join_to_the_texts_bytes(folder, sentencepiece_folder, kind):
    """Tokenizer.piece: what log-probabilities show for one token, a byte of a character included
    (where decoding the token alone gives U+FFFD); a special token's piece is its name."""
    tok = Tokenizer({"byte-level": folder, "byte-fallback": BUNDLED / "tiny-chat",
                     "tokenizer.model": sentencepiece_folder}[kind])
    text = "Ünïcödé — ☃ 日本語 🙂 and plain words"
    ids = tok.encode(text, add_special_tokens=False)
    pieces = [tok.piece(i) for i in ids]
    assert b"".join(pieces).decode("utf-8") in (text, " " + text)  # SentencePiece's dummy-prefix space
    if kind != "tokenizer.model":  # the tiny SentencePiece model knows too few characters to split one
        assert any(len(p) == 1 and p[0] >= 0x80 for p in pieces)
    eos = tok.eos_token_ids[0]
    assert tok.piece(eos).decode() == {i: t for t, i in tok.vocabulary().items()}[eos]  # e.g. </s>
    assert tok.piece(tok.vocab_size) == b""
