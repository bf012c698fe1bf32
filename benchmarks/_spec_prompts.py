"""Prompts of three kinds for the speculative-decoding benchmark (tiny-chat was trained on Python's
documentation, so they stay in that world). The passage to rewrite is from a held-out page."""

from __future__ import annotations

from pathlib import Path

PASSAGE = (Path(__file__).resolve().parent.parent / "edgegen" / "_data" / "heldout-eval.txt").read_text()[:1400]

CODE = '''import json

def save(obj, path):
    """Write obj to path as JSON."""
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)

def load(path):
    """Read a JSON document from path."""
    with open(path) as f:
        return json.load(f)
'''


def _paragraphs(low: int = 150, high: int = 600) -> list[str]:
    text = (Path(__file__).resolve().parent.parent / "edgegen" / "_data" / "heldout-eval.txt").read_text()
    return [line for line in text.split("\n") if low <= len(line) <= high]


_P = _paragraphs()
# Edit requests whose answers copy most of the prompt (held-out paragraphs; a typo put in by hand):
# where prompt-lookup drafting pays, and what tiny-chat learnt in examples/train_tiny_copy.py.
EDIT = [
    f"Rewrite this passage without changing it:\n\n{_P[0]}",
    f"Rewrite this passage without changing it:\n\n{_P[3]}",
    f"Repeat the following text exactly:\n\n{_P[4]}",
    f"Fix the typo in this passage:\n\n{_P[1].replace('organized', 'orgainzed')}",
    f"Fix the typos:\n\n{_P[5].replace('callables', 'calables', 1)}",
    f"Reformat this passage with one sentence per line:\n\n{_P[2]}",
    f"Quote the first sentence of this passage:\n\n{_P[6]}",
    "Continue this code:\n\n" + "\n".join(CODE.split("\n")[:5]),
]

PROMPTS = {
    "chat": ["What does json.dumps do?", "Explain list comprehensions.", "What is a generator?"],
    "rewrite": [f"Rewrite the following passage in your own words:\n\n{PASSAGE}",
                f"Summarise this text:\n\n{PASSAGE[400:]}"],
    "code": [f"What does this code do?\n\n{CODE}", f"Add error handling to this code:\n\n{CODE}"],
    "edit": EDIT,
}
