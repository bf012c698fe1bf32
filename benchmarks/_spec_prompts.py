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

PROMPTS = {
    "chat": ["What does json.dumps do?", "Explain list comprehensions.", "What is a generator?"],
    "rewrite": [f"Rewrite the following passage in your own words:\n\n{PASSAGE}",
                f"Summarise this text:\n\n{PASSAGE[400:]}"],
    "code": [f"What does this code do?\n\n{CODE}", f"Add error handling to this code:\n\n{CODE}"],
}
