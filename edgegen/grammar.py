"""Constrained decoding on llguidance (the engine llama.cpp and onnxruntime-genai use): a JSON
Schema, a regular expression or a Lark / GBNF grammar becomes a `TokenConstraint` that masks the
logits the sampler sees, so every strategy that samples through `Sampler` keeps the output in the
grammar: plain decoding, speculative verification (a draft outside the grammar has probability 0
under the masked target, and drafts are cut where they leave it), a draft model's own sampling.

llguidance computes each mask from the grammar's state over the tokenizer's byte strings (a token
trie walked against an Earley parser), in tens of microseconds for a JSON schema; it won over
xgrammar, which needs torch, transformers and triton at run time (benchmarks/bench_grammar.py
measures both).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np

from edgegen.core.errors import BackendUnavailable, ConfigError, InferenceError
from edgegen.core.options import OutputOptions
from edgegen.tools import call_grammar, tool_format

KINDS = ("json_schema", "regex", "grammar")
# JSON as json.dumps writes it, no free whitespace: a small model given "any whitespace" may spend
# its tokens on spaces. A schema's own "x-guidance" options override this.
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _llguidance() -> Any:
    try:
        import llguidance
    except ImportError as exc:
        raise BackendUnavailable(f"structured output needs llguidance ({exc}); install it with: "
                                 "pip install llguidance") from None
    return llguidance


def constraint_for(output: OutputOptions, tokenizer: Any, vocab_size: int, stop_ids: Sequence[int],
                   prompt_length: int) -> "GrammarConstraint | None":
    """The constraint `output` asks for (None without one), for a generation after a prompt of
    `prompt_length` tokens. A grammar that does not compile is one line (ConfigError)."""
    if not output.constrained:
        return None
    llg = _llguidance()
    grammar = compile_grammar(output, getattr(tokenizer, "chat_template", None))
    tok = _tokenizer(tokenizer, vocab_size, tuple(stop_ids))
    error = llg.LLMatcher.validate_grammar(grammar, tok)
    if error and not error.startswith("WARNING"):
        raise ConfigError(f"the {_what(output)} cannot be used: {' '.join(error.split())[:300]}")
    matcher = llg.LLMatcher(tok, grammar, log_level=0)
    if matcher.is_error():
        raise ConfigError(f"the {_what(output)} cannot be used: {' '.join(matcher.get_error().split())[:300]}")
    return GrammarConstraint(matcher, prompt_length, vocab_size, tok.vocab_size)


def compile_grammar(output: OutputOptions, chat_template: str | None = None) -> str:
    """llguidance's grammar text for the constraint in `output` (tool calls in the format of
    `chat_template`)."""
    llg = _llguidance()
    try:
        if output.calls_possible:
            return llg.LLMatcher.grammar_from_lark(call_grammar(output, tool_format(chat_template), JSON_LAYOUT))
        if output.json_schema is not None:
            return llg.LLMatcher.grammar_from_json_schema(output.json_schema, defaults=JSON_LAYOUT)
        if output.regex is not None:
            return llg.LLMatcher.grammar_from_regex(output.regex)
        from llguidance.gbnf_to_lark import any_to_lark

        try:
            text = any_to_lark(output.grammar)  # GBNF (llama.cpp's) becomes Lark; Lark stays as it is
        except Exception as exc:  # the converter raises bare Exceptions for unknown rules
            raise ValueError(exc) from None
        return llg.LLMatcher.grammar_from_lark(text)
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"the {_what(output)} cannot be used: {' '.join(str(exc).split())[:300]}") from None


def _what(output: OutputOptions) -> str:
    if output.calls_possible:
        return "tools' parameter schemas"
    return {"json_schema": "JSON schema", "regex": "regular expression", "grammar": "grammar"}[
        next(k for k in KINDS if getattr(output, k) is not None)]


@functools.lru_cache(maxsize=8)
def _tokenizer(tokenizer: Any, vocab_size: int, stop_ids: tuple[int, ...]) -> Any:
    """llguidance's view of a tokenizer (built once per tokenizer: about a second for 150k tokens)."""
    llg = _llguidance()
    eos = list(stop_ids) or None
    source = tokenizer.backend_json()
    if source is not None:
        return llg.LLTokenizer(source, n_vocab=max(vocab_size, tokenizer.vocab_size), eos_token=eos)
    return llg.LLTokenizer(llg.TokenizerWrapper(_Pieces(tokenizer, stop_ids)),
                           n_vocab=max(vocab_size, tokenizer.vocab_size), eos_token=eos)


class _Pieces:
    """A SentencePiece vocabulary in the shape llguidance's TokenizerWrapper reads."""

    def __init__(self, tokenizer: Any, stop_ids: tuple[int, ...]):
        self.tokens, self.special_token_ids = tokenizer.token_bytes()
        self.eos_token_id = stop_ids[0] if stop_ids else None
        self.bos_token_id = tokenizer.bos_token_id
        self._tokenizer = tokenizer

    def __call__(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False)


class GrammarConstraint:
    """A TokenConstraint over one llguidance matcher, kept in step with the history it is asked
    about: rolled back to the common prefix, then fed the new tokens."""

    def __init__(self, matcher: Any, prompt_length: int, vocab_size: int, grammar_vocab: int | None = None):
        self.matcher, self.start, self.vocab_size = matcher, prompt_length, vocab_size
        self.consumed: list[int] = []
        # The mask, 32 tokens a word, as long as llguidance's vocabulary (it may pad the model's).
        self._words = np.empty((max(grammar_vocab or 0, vocab_size) + 31) // 32, dtype=np.int32)

    def allowed(self, history: Sequence[int]) -> np.ndarray:
        if not self._sync(history):  # past the grammar's end (a draft went on after EOS): never emitted
            return np.ones(self.vocab_size, dtype=bool)
        self.matcher.unsafe_compute_mask_ptr(self._words.ctypes.data, self._words.nbytes)
        return np.unpackbits(self._words.view(np.uint8), bitorder="little")[: self.vocab_size].view(bool)

    def valid_prefix(self, history: Sequence[int], tokens: Sequence[int]) -> int:
        if not self._sync(history):
            return 0
        return int(self.matcher.validate_tokens([int(t) for t in tokens]))

    def _sync(self, history: Sequence[int]) -> bool:
        """Bring the matcher to the state after `history`; False when the history runs on past
        where the grammar accepts tokens (after its end)."""
        generated = [int(t) for t in history[self.start:]]
        same = len(self.consumed)
        if generated[:same] != self.consumed:  # a rollback: find where the histories part
            same = next((i for i, (a, b) in enumerate(zip(self.consumed, generated)) if a != b), len(generated))
        if same < len(self.consumed):
            self.matcher.rollback(len(self.consumed) - same)
            del self.consumed[same:]
        rest = generated[same:]
        if rest:
            fits = self.matcher.validate_tokens(rest)
            if fits:
                self.matcher.consume_tokens(rest[:fits])
                self.consumed += rest[:fits]
            if self.matcher.is_error():
                error = " ".join(self.matcher.get_error().split())
                if "too many" in error.lower() or "limit" in error.lower():  # the grammar's size, not the model
                    raise ConfigError(f"the grammar (or regex or schema) grows past llguidance's limits as it is "
                                      f"matched ({error[:160]}); simplify it")
                raise InferenceError(f"the output left its grammar ({error[:200]})")
            return fits == len(rest)
        return True
