"""Edit-style chat turns for tiny-chat: rewrite, fix a typo in, quote, reformat or continue a given
passage, with answers that copy most of the passage, as real instruction data has.

tiny-chat's corpus (tiny_corpus.py) only asks questions about the documentation, so the model never
learnt to copy from its prompt; asked to rewrite a passage it paraphrases, and prompt-lookup
drafting (which proposes the tokens that followed the last n-gram in the prompt) has nothing to
hit. These turns teach it to copy. The passages are runs of one to three lines from the training
split's prose (never the held-out pages); every choice is drawn from a seeded `random.Random`, so
the same corpus and seed give the same records.

    python examples/tiny_copy_data.py --corpus /tmp/tiny_corpus --count 5    # print a few
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`\"(])")
MIN_CHARS, MAX_CHARS = 80, 640  # a passage: long enough to be worth copying, short enough to fit a window
TASKS = {
    "copy": ("Rewrite this passage without changing it:", "Repeat the following text exactly:",
             "Copy this passage:", "Say this back to me word for word:"),
    "typo": ("Fix the typo in this passage:", "Correct the spelling mistakes in this text:",
             "Fix the typos:"),
    "quote_first": ("Quote the first sentence of this passage:", "What is the first sentence of this text?"),
    "quote_last": ("Quote the last sentence of this passage:",),
    "lines": ("Reformat this passage with one sentence per line:", "Put each sentence of this text on its own line:"),
    "bullets": ("Reformat this passage as a bulleted list of its sentences:",),
    "continue": ("Continue this passage:", "Finish this text:"),
    "code": ("Rewrite this code without changing it:", "Continue this code:", "Fix the indentation of this code:"),
    "scrambled": ("Rewrite this passage without changing it:", "Repeat the following text exactly:",
                  "Copy this passage:", "Say this back to me word for word:"),
}
# "scrambled": a passage with its words shuffled, to copy. Nothing but the prompt predicts its
# answer, so all of its loss pushes towards copying (induction heads), where a natural passage's
# words are half-guessable without looking back. Added after two runs on natural passages only
# (400 steps at a 0.0003 peak, 200 at 0.001) left the loss on copied answers above the prompts';
# with it the answers' loss broke away between steps 300 and 500 (tiny-chat's card has the curve).
# Whether natural passages alone would have got there later was not tried.
WEIGHTS = {"copy": 4, "typo": 3, "quote_first": 1, "quote_last": 1, "lines": 1, "bullets": 1, "continue": 2,
           "code": 2, "scrambled": 5}


def chat(user: str, assistant: str) -> str:
    """One turn as the chat template renders it (the record format of tiny_corpus.py)."""
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{assistant}<|im_end|>\n"


def is_code(line: str) -> bool:
    return line.startswith((">>> ", "... ", "    ", "def ", "class ", "import ", "from ", "for ", "if ")) \
        or bool(re.match(r"^[\w.]+ = ", line))


def passages(records: list[dict]) -> tuple[list[str], list[str]]:
    """(prose passages, code passages): runs of 1-3 consecutive lines of one kind within the length bounds."""
    prose, code = [], []
    for record in records:
        if record["kind"] != "prose":
            continue
        lines = [line for line in record["text"].split("\n") if line.strip()]
        i = 0
        while i < len(lines):
            kind = is_code(lines[i])
            run = [lines[i]]
            while len(run) < 3 and i + len(run) < len(lines) and is_code(lines[i + len(run)]) == kind \
                    and len("\n".join(run + [lines[i + len(run)]])) <= MAX_CHARS:
                run.append(lines[i + len(run)])
            text = "\n".join(run)
            if MIN_CHARS <= len(text) <= MAX_CHARS:
                (code if kind else prose).append(text)
            i += len(run)
    return prose, code


def typo(text: str, rng: random.Random) -> str | None:
    """`text` with one or two words misspelt (two letters swapped, one dropped or one doubled)."""
    words = [m for m in re.finditer(r"[A-Za-z]{5,}", text)]
    if not words:
        return None
    out = text
    for match in sorted(rng.sample(words, min(len(words), rng.choice((1, 1, 2)))), key=lambda m: -m.start()):
        w, k = match.group(), rng.randrange(1, len(match.group()) - 2)
        edit = rng.choice(("swap", "drop", "double"))
        bad = (w[:k] + w[k + 1] + w[k] + w[k + 2:] if edit == "swap" else
               w[:k] + w[k + 1:] if edit == "drop" else w[:k] + w[k] + w[k:])
        if bad == w:
            return None
        out = out[:match.start()] + bad + out[match.end():]
    return out


def indent_broken(code: str, rng: random.Random) -> str:
    return "\n".join((" " * rng.choice((0, 2, 6))) + line.lstrip() if line.startswith(" ") else line
                     for line in code.split("\n"))


def make_turn(task: str, text: str, rng: random.Random) -> tuple[str, str, str] | None:
    """(instruction, the passage as given in the prompt, answer), or None where the passage does
    not suit the task."""
    instruction = rng.choice(TASKS[task])
    sentences = [s for s in SENTENCE_END.split(text.replace("\n", " ")) if s.strip()]
    if task == "copy":
        return instruction, text, text
    if task == "scrambled":
        words = text.split()
        rng.shuffle(words)
        scrambled = " ".join(words)
        return instruction, scrambled, scrambled
    if task == "typo":
        bad = typo(text, rng)
        return None if bad is None else (instruction, bad, text)
    if task in ("quote_first", "quote_last"):
        if len(sentences) < 2:
            return None
        return instruction, text, sentences[0] if task == "quote_first" else sentences[-1]
    if task in ("lines", "bullets"):
        if len(sentences) < 2:
            return None
        return instruction, text, "\n".join(("- " if task == "bullets" else "") + s for s in sentences)
    if task == "continue":
        if len(sentences) < 3:
            return None
        cut = rng.randrange(1, len(sentences) - 1)
        return instruction, " ".join(sentences[:cut]), " ".join(sentences[cut:])
    if task == "code":
        lines = text.split("\n")
        if instruction.startswith("Continue"):
            if len(lines) < 2:
                return None
            cut = rng.randrange(1, len(lines))
            return instruction, "\n".join(lines[:cut]), "\n".join(lines[cut:])
        if instruction.startswith("Fix the indentation"):
            broken = indent_broken(text, rng)
            return None if broken == text else (instruction, broken, text)
        return instruction, text, text
    raise ValueError(task)


def copy_records(records: list[dict], count: int, seed: int) -> list[dict]:
    """`count` chat records of edit-style turns over the passages of `records` (training prose)."""
    rng = random.Random(seed)
    prose, code = passages(records)
    tasks, weights = list(WEIGHTS), list(WEIGHTS.values())
    out = []
    while len(out) < count:
        task = rng.choices(tasks, weights)[0]
        turn = make_turn(task, rng.choice(code if task == "code" else prose), rng)
        if turn is not None:
            instruction, given, answer = turn
            out.append({"doc": "edit turn", "kind": "chat", "task": task,
                        "text": chat(f"{instruction}\n\n{given}", answer)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path("/tmp/tiny_corpus"))
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    records = [json.loads(line) for line in (args.corpus / "train.jsonl").read_text().splitlines()]
    for record in copy_records(records, args.count, args.seed):
        print(f"--- {record['task']}\n{record['text']}")


if __name__ == "__main__":
    main()
