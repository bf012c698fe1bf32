"""Build a small English corpus from the HTML of Python's documentation (Debian `python3-doc`).

Each HTML page becomes one plain-prose record, and its headings and API entries become
question/answer chat turns in ChatML form. Pages are split into train and held-out sets by a
hash of their path, so the split is deterministic and no page is in both.

    apt-get install -y python3-doc
    python examples/tiny_corpus.py --out /tmp/tiny_corpus

writes `train.jsonl` and `heldout.jsonl`: one JSON object per line,
`{"doc": "library/json.html", "kind": "prose" | "chat", "text": "..."}`.
The Python documentation is © Python Software Foundation, under the PSF License Agreement.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import random
import re
from html.parser import HTMLParser
from pathlib import Path

SKIPPED_PAGES = re.compile(r"^(genindex.*|py-modindex|search|contents)\.html$")
HEADING_TAGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
BLOCK_TAGS = {"p", "li", "dt", "dd", "pre", "td", "th", "caption"} | HEADING_TAGS
VOID_TAGS = {"br", "hr", "img", "input", "meta", "link", "wbr", "col", "area", "base", "source"}
SKIPPED_CLASSES = {"headerlink", "related", "sphinxsidebar", "footer", "toctree-wrapper", "linenos"}
MAX_CODE_LINES = 4
HELDOUT_PERCENT = 2
QUESTIONS = ("What is {}?", "Explain {}.", "Tell me about {}.", "Can you describe {}?")
API_QUESTIONS = ("What does {} do?", "Explain {}.", "What is {} for?", "Describe {}.")
NOT_AN_ANSWER = re.compile(
    r"^(Source code:|Return value:|Part of the|New in version|Changed in version)")
CHATLESS_FOLDERS = ("whatsnew/",)  # release notes would contradict the reference pages
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`\"(])")


def chat_text(question: str, answer: str) -> str:
    """One user turn and one assistant turn in the ChatML layout of the bundled chat template."""
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>\n"


class DocParser(HTMLParser):
    """Collects the blocks of a Sphinx page's main body as (kind, text, anchor) triples.

    kind is "h" (a heading), "dt" (an API signature), "code" (a short code excerpt) or "p".
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[tuple[str, str, str]] = []
        self._stack: list[tuple[str, str, str]] = []  # (tag, role, anchor id)
        self._text: list[str] = []

    def _has_role(self, role: str) -> bool:
        return any(entry[1] == role for entry in self._stack)

    def _flush(self, tag: str, anchor: str) -> None:
        text = "".join(self._text)
        self._text = []
        if tag == "pre":
            lines = [line.rstrip() for line in text.strip("\n").splitlines() if line.strip()]
            text, kind = "\n".join(lines[:MAX_CODE_LINES]), "code"
        else:
            text = " ".join(text.split())
            kind = "h" if tag in HEADING_TAGS else "dt" if tag == "dt" else "p"
        if text:
            self.blocks.append((kind, text, anchor))

    def _innermost_block(self) -> tuple[str, str]:
        for tag, _, anchor in reversed(self._stack):
            if tag in BLOCK_TAGS:
                return tag, anchor
        return "p", ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in VOID_TAGS:
            return
        attributes = dict(attrs)
        classes = set((attributes.get("class") or "").split())
        role = "main" if attributes.get("role") == "main" else ""
        if tag in ("script", "style", "nav") or classes & SKIPPED_CLASSES:
            role = "skip"
        if tag in BLOCK_TAGS and self._has_role("main"):
            self._flush(*self._innermost_block())
        self._stack.append((tag, role, attributes.get("id") or ""))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID_TAGS or all(entry[0] != tag for entry in self._stack):
            return
        while self._stack:
            open_tag, _, anchor = self._stack[-1]
            if open_tag in BLOCK_TAGS and self._has_role("main"):
                self._flush(open_tag, anchor)
            self._stack.pop()
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._has_role("main") and not self._has_role("skip"):
            self._text.append(data)


def first_sentences(text: str, max_sentences: int = 2, max_chars: int = 320) -> str:
    """The first sentences of `text`, stopping before `max_chars` (but keeping at least one)."""
    sentences = SENTENCE_END.split(text)
    answer = sentences[0]
    for sentence in sentences[1:max_sentences]:
        if len(answer) + len(sentence) + 1 > max_chars:
            break
        answer += " " + sentence
    return answer[:-1] + "." if answer.endswith(":") else answer


def prose_text(blocks: list[tuple[str, str, str]]) -> str:
    """The page as plain text: headings set off by blank lines, one block per line."""
    lines = []
    for kind, text, _ in blocks:
        lines.append(f"\n{text}\n" if kind == "h" else text)
    return "\n".join(lines).strip() + "\n"


def api_name(signature: str, anchor: str) -> str:
    """`json.dumps` from the dt anchor id, or the signature text before its argument list."""
    if anchor and re.fullmatch(r"[A-Za-z_][\w.]*", anchor):
        return anchor.removeprefix("c.")
    words = signature.split("(")[0].split()
    return words[-1] if words else ""


def section_answer(blocks: list[tuple[str, str, str]], start: int) -> str:
    """The first real paragraph after blocks[start], before the next heading or API entry."""
    for kind, text, _ in blocks[start + 1:]:
        if kind in ("h", "dt"):
            return ""
        if kind == "p" and len(text) >= 40 and not NOT_AN_ANSWER.match(text):
            return first_sentences(text)
    return ""


def chat_pairs(blocks: list[tuple[str, str, str]], rng: random.Random) -> list[tuple[str, str]]:
    """(question, answer) pairs: each heading or API entry with the paragraph that follows it."""
    pairs = []
    for index, (kind, text, anchor) in enumerate(blocks):
        answer = section_answer(blocks, index) if kind in ("h", "dt") else ""
        topic = text.split(" — ")[0] if kind == "h" else api_name(text, anchor)
        if not answer or not topic:
            continue
        templates = QUESTIONS if kind == "h" else API_QUESTIONS
        pairs.append((rng.choice(templates).format(topic), answer))
    return pairs


def page_records(path: Path, root: Path, rng: random.Random) -> list[dict[str, str]]:
    """The prose record and the chat records of one HTML page."""
    parser = DocParser()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    doc = path.relative_to(root).as_posix()
    if not parser.blocks:
        return []
    records = [{"doc": doc, "kind": "prose", "text": prose_text(parser.blocks)}]
    if doc.startswith(CHATLESS_FOLDERS):
        return records
    for question, answer in chat_pairs(parser.blocks, rng):
        records.append({"doc": doc, "kind": "chat", "text": chat_text(question, answer)})
    return records


def is_heldout(doc: str) -> bool:
    """A stable, content-independent split: about HELDOUT_PERCENT of the pages are held out."""
    return int(hashlib.sha1(doc.encode()).hexdigest(), 16) % 100 < HELDOUT_PERCENT


def find_doc_root() -> Path:
    candidates = sorted(glob.glob("/usr/share/doc/python3*/html"))
    if not candidates:
        raise SystemExit("python3-doc not found: run `apt-get install -y python3-doc` first")
    return Path(candidates[-1])


def build(root: Path, out_dir: Path, seed: int) -> dict[str, int]:
    """Write train.jsonl and heldout.jsonl under `out_dir`; return record counts."""
    rng = random.Random(seed)
    pages = [path for path in sorted(root.rglob("*.html"))
             if not path.relative_to(root).parts[0].startswith("_")
             and not SKIPPED_PAGES.match(path.name)]
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {"pages": len(pages), "train": 0, "heldout": 0, "chat": 0}
    with open(out_dir / "train.jsonl", "w") as train, \
            open(out_dir / "heldout.jsonl", "w") as heldout:
        for page in pages:
            for record in page_records(page, root, rng):
                split = "heldout" if is_heldout(record["doc"]) else "train"
                (heldout if split == "heldout" else train).write(json.dumps(record) + "\n")
                counts[split] += 1
                counts["chat"] += record["kind"] == "chat"
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=Path, default=None, help="python3-doc html folder")
    parser.add_argument("--out", type=Path, default=Path("/tmp/tiny_corpus"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    counts = build(args.docs or find_doc_root(), args.out, args.seed)
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
