"""Constrained decoding: per-token cost of the token mask with llguidance and xgrammar, one run.

    python benchmarks/bench_grammar.py [--steps 300] [--pin] [--json PATH]

Two vocabularies: tiny-chat's bundled tokenizer (8,192 tokens) and a 151,936-entry Qwen2-style
byte-level BPE the size of Qwen2.5-0.5B's (trained here once on local site-packages text, cached
under ~/.cache/edgegen-bench/). Two workloads: a JSON schema (nested objects, arrays, enums, number
ranges, string lengths, additionalProperties false) and a small regex. Valid instances, tokenized
by the vocabulary's own tokenizer without special tokens, are teacher-forced: each step computes
the mask, then consumes the next token; instances repeat until at least `--steps` steps, after one
untimed warm-up instance. compile = grammar to matcher (median of 3, xgrammar's cache off); first
mask = the first mask of a freshly compiled matcher. llguidance runs twice, once with
compute_bitmask() (bytes) and once with fill_next_token_bitmask() into a numpy array. The step the
masks are compared with is edgegen's own tiny-chat decode step on this CPU (1 / decode tok/s).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

from _checkpoint import CACHE_ROOT, QWEN2_SPLIT, SPECIAL_TOKENS
from _common import log
from _report import cpu_name, plain_table

ROOT = Path(__file__).resolve().parents[1]
TINY_TOKENIZER = ROOT / "edgegen" / "_bundled" / "tiny-chat" / "tokenizer.json"
BIG_VOCAB = 151_936
BIG_TOKENIZER = CACHE_ROOT / f"bpe-{BIG_VOCAB}" / "tokenizer.json"
CORPUS_BYTES = 60_000_000


def obj(required: list[str], **props: dict) -> dict:
    """A closed object (additionalProperties false) with these properties, in this order."""
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


def text(lo: int, hi: int) -> dict:
    return {"type": "string", "minLength": lo, "maxLength": hi}


SCHEMA = obj(
    ["id", "status", "customer", "items", "tags", "gift"],
    id={"type": "integer", "minimum": 1, "maximum": 999999},
    status={"enum": ["pending", "paid", "shipped", "delivered", "cancelled"]},
    customer=obj(["name", "tier", "address"], name=text(1, 40), tier={"enum": ["free", "pro", "enterprise"]},
                 address=obj(["city", "zip"], city=text(2, 30), zip=text(4, 10))),
    items={"type": "array", "minItems": 1, "maxItems": 8,
           "items": obj(["sku", "qty", "price"], sku=text(4, 12), qty={"type": "integer", "minimum": 1, "maximum": 100},
                        price={"type": "number", "minimum": 0, "maximum": 10000})},
    tags={"type": "array", "maxItems": 5, "items": text(0, 16)},
    gift={"type": "boolean"},
)
INSTANCES = [
    {"id": 1042, "status": "shipped",
     "customer": {"name": "Ada Lovelace", "tier": "pro", "address": {"city": "London", "zip": "NW1 6XE"}},
     "items": [{"sku": "BK-0001", "qty": 2, "price": 19.99}, {"sku": "PEN-42", "qty": 10, "price": 1.5}],
     "tags": ["books", "priority"], "gift": False},
    {"id": 7, "status": "pending",
     "customer": {"name": "Grace Hopper", "tier": "enterprise", "address": {"city": "Arlington", "zip": "22201"}},
     "items": [{"sku": "COBOL-85", "qty": 1, "price": 249.0}], "tags": [], "gift": True},
    {"id": 998877, "status": "cancelled",
     "customer": {"name": "Alan Turing", "tier": "free", "address": {"city": "Wilmslow", "zip": "SK9 1AA"}},
     "items": [{"sku": "ENIGMA", "qty": 1, "price": 9999.5}, {"sku": "TAPE-100", "qty": 100, "price": 0.25},
               {"sku": "BOMB-3", "qty": 3, "price": 120}],
     "tags": ["history", "crypto", "refund"], "gift": False},
]
REGEX = r"[a-z]{3,12}(\.[a-z]{2,10})?@[a-z]{3,10}\.(com|org|net|io)"
REGEX_INSTANCES = ["alice@example.com", "grace.hopper@navy.org", "bob@mail.net", "turing.alan@bletchley.io"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300, help="timed mask+consume steps per row (at least)")
    p.add_argument("--pin", action="store_true", help="pin this process to one CPU core")
    p.add_argument("--json", type=Path, help="also write the rows to this file")
    return p.parse_args()




# ------------------------------------------------------------------ the 151,936-entry vocabulary

def training_texts(max_bytes: int = CORPUS_BYTES) -> list[str]:
    """Local text: the .py/.txt/.md files under site-packages (sorted; over 2 MB or not UTF-8: skipped)."""
    import sysconfig

    site = Path(sysconfig.get_paths()["purelib"])
    texts, total = [], 0
    for path in sorted(site.rglob("*")):
        if path.suffix not in (".py", ".txt", ".md") or not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
        total += len(texts[-1].encode())
        if total >= max_bytes:
            break
    return texts


def ensure_big_tokenizer() -> tuple[Path, dict]:
    """Train (once) a Qwen2-style byte-level BPE aiming at 151,936 entries; pad with added tokens."""
    info_path = BIG_TOKENIZER.with_name("info.json")
    if info_path.exists():
        return BIG_TOKENIZER, json.loads(info_path.read_text())
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    texts = training_texts()
    log(f"training a {BIG_VOCAB}-token byte-level BPE on {len(texts)} files (~{CORPUS_BYTES // 10**6} MB) ...")
    t0 = time.perf_counter()
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BIG_VOCAB, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer, length=len(texts))
    trained = tok.get_vocab_size()
    if trained < BIG_VOCAB:
        tok.add_special_tokens([f"<|extra_{i}|>" for i in range(BIG_VOCAB - trained)])
    info = {"trained_vocab": trained, "vocab": tok.get_vocab_size(), "files": len(texts),
            "train_s": round(time.perf_counter() - t0, 1)}
    BIG_TOKENIZER.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(BIG_TOKENIZER))
    info_path.write_text(json.dumps(info))
    log(f"trained {trained} tokens, padded to {info['vocab']} ({info['train_s']} s) -> {BIG_TOKENIZER}")
    return BIG_TOKENIZER, info


# ------------------------------------------------------------------ engines

def word_bit(mask, t: int) -> int:
    """Token t's bit in a (1, words) int32 bitmask (numpy or torch)."""
    return (int(mask[0, t >> 5]) >> (t & 31)) & 1


def byte_bit(mask: bytes, t: int) -> int:
    return (mask[t >> 3] >> (t & 7)) & 1


def llguidance_engine(tok_path: Path, eos: int, numpy_mask: bool):
    """(tokenizer setup s, compile(kind, spec) -> matcher, mask(m) -> bitmask, bit(bitmask, t), consume(m, t))."""
    import llguidance
    import llguidance.numpy as lnp

    t0 = time.perf_counter()
    tok = llguidance.LLTokenizer(tok_path.read_text(), eos_token=eos)
    setup_s = time.perf_counter() - t0
    buf = lnp.allocate_token_bitmask(1, tok.vocab_size)

    def compile(kind: str, spec):
        grammar = (llguidance.LLMatcher.grammar_from_json_schema(spec) if kind == "json"
                   else llguidance.LLMatcher.grammar_from_regex(spec))
        m = llguidance.LLMatcher(tok, grammar)
        if m.is_error():
            raise RuntimeError(m.get_error())
        return m

    def fill(m):
        lnp.fill_next_token_bitmask(m, buf)
        return buf

    if numpy_mask:
        return setup_s, compile, fill, word_bit, lambda m, t: m.consume_token(t)
    return setup_s, compile, lambda m: m.compute_bitmask(), byte_bit, lambda m, t: m.consume_token(t)


def xgrammar_engine(tok_path: Path, eos: int, vocab: int):
    import xgrammar as xgr
    from transformers import PreTrainedTokenizerFast

    t0 = time.perf_counter()
    hf = PreTrainedTokenizerFast(tokenizer_file=str(tok_path))
    info = xgr.TokenizerInfo.from_huggingface(hf, vocab_size=vocab, stop_token_ids=[eos])
    compiler = xgr.GrammarCompiler(info, max_threads=len(os.sched_getaffinity(0)), cache_enabled=False)
    setup_s = time.perf_counter() - t0
    buf = xgr.allocate_token_bitmask(1, info.vocab_size)

    def compile(kind: str, spec):
        compiled = (compiler.compile_json_schema(spec) if kind == "json" else compiler.compile_regex(spec))
        return xgr.GrammarMatcher(compiled)

    def fill(m):
        m.fill_next_token_bitmask(buf)
        return buf

    return setup_s, compile, fill, word_bit, lambda m, t: m.accept_token(t)


# ------------------------------------------------------------------ timing

def time_row(engine, kind: str, spec, sequences: list[list[int]], min_steps: int) -> dict:
    setup_s, compile, mask, bit, consume = engine
    compile_s, first_mask_s = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        m = compile(kind, spec)
        t1 = time.perf_counter()
        mask(m)
        first_mask_s.append(time.perf_counter() - t1)
        compile_s.append(t1 - t0)
    mask_ns, consume_ns = [], []
    for i, seq in enumerate(itertools.cycle(sequences)):  # the first instance is the warm-up
        if i > 0 and len(mask_ns) >= min_steps:
            break
        m.reset()
        for t in seq:
            t0 = time.perf_counter_ns()
            bits = mask(m)
            t1 = time.perf_counter_ns()
            ok = consume(m, t)
            t2 = time.perf_counter_ns()
            if not (bit(bits, t) and ok):
                raise RuntimeError(f"token {t} rejected (allowed by the mask: {bool(bit(bits, t))})")
            if i > 0:
                mask_ns.append(t1 - t0)
                consume_ns.append(t2 - t1)
    mask_ns.sort()
    return {"setup_ms": setup_s * 1e3, "compile_ms": statistics.median(compile_s) * 1e3,
            "first_mask_us": statistics.median(first_mask_s) * 1e6, "steps": len(mask_ns),
            "mask_median_us": statistics.median(mask_ns) / 1e3,
            "mask_p99_us": mask_ns[min(len(mask_ns) - 1, int(0.99 * len(mask_ns)))] / 1e3,
            "consume_median_us": statistics.median(consume_ns) / 1e3}


def edgegen_step_us(runs: int = 5) -> float:
    """tiny-chat's decode step on this CPU: 1 / median decode tok/s over `runs` (after a warm-up)."""
    sys.path.insert(0, str(ROOT))
    import edgegen

    model = edgegen.load("tiny-chat")
    model.generate("Write a JSON object.", max_tokens=64, ignore_eos=True)
    rates = [model.generate("Write a JSON object.", max_tokens=64, ignore_eos=True)
             .stats.timing()["decode_tokens_per_s"] for _ in range(runs)]
    return 1e6 / statistics.median(rates)


def load_vocab(tok_path: Path) -> tuple[dict[str, list[list[int]]], int, int]:
    """The instances tokenized by this vocabulary (no special tokens), its EOS id and its size."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_path))
    texts = {"json": [json.dumps(x) for x in INSTANCES], "regex": REGEX_INSTANCES}
    seqs = {k: [tok.encode(s, add_special_tokens=False).ids for s in v] for k, v in texts.items()}
    for k, v in texts.items():
        assert [tok.decode(s) for s in seqs[k]] == v, f"{tok_path}: {k} instances do not round-trip"
    return seqs, tok.token_to_id("<|im_end|>"), tok.get_vocab_size()


def print_table(rows: list[dict]) -> None:
    header = ("engine", "vocab", "workload", "tok setup ms", "compile ms", "1st mask µs", "steps",
              "mask med µs", "mask p99 µs", "consume med µs", "mask % step")
    print(plain_table([header] + [
        (r["engine"], f"{r['vocab']} ({r['vocab_size']})", r["workload"], f"{r['setup_ms']:.0f}",
         f"{r['compile_ms']:.1f}", f"{r['first_mask_us']:.0f}", str(r["steps"]), f"{r['mask_median_us']:.1f}",
         f"{r['mask_p99_us']:.1f}", f"{r['consume_median_us']:.1f}", f"{r['mask_pct_of_step']:.1f}%")
        for r in rows]))
    llg = {}
    for r in rows:
        if r["engine"].startswith("llguidance"):
            llg.setdefault((r["vocab"], r["workload"]), []).append((r["mask_median_us"], r["engine"]))
    print("faster llguidance mask call: " + ", ".join(f"{v} {w}: {min(c)[1]}" for (v, w), c in llg.items()))
    print("mask % step = mask median / edgegen's tiny-chat decode step on this CPU, for both vocabularies "
          "(a real 151,936-vocab model's step is far longer)")


def main() -> None:
    args = parse_args()
    if args.pin:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    print(f"CPU: {cpu_name()} ({len(os.sched_getaffinity(0))} cores usable{', pinned' if args.pin else ''})")
    try:
        import xgrammar  # noqa: F401
        xgr_reason = None
    except Exception as exc:  # any import failure: report it, run llguidance alone
        xgr_reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
        print(f"xgrammar: unavailable ({xgr_reason})")
    step_us = edgegen_step_us()
    print(f"edgegen tiny-chat decode step: {step_us:.0f} µs ({1e6 / step_us:.0f} tok/s)")
    big_path, info = ensure_big_tokenizer()
    print(f"qwen-size vocabulary: BPE trained to {info['trained_vocab']} tokens, "
          f"padded to {info['vocab']} with added tokens")
    rows = []
    for vname, path in (("tiny-chat", TINY_TOKENIZER), ("qwen-size", big_path)):
        seqs, eos, vocab = load_vocab(path)
        engines = {"llguidance/bytes": lambda: llguidance_engine(path, eos, numpy_mask=False),
                   "llguidance/numpy": lambda: llguidance_engine(path, eos, numpy_mask=True)}
        if xgr_reason is None:
            engines["xgrammar"] = lambda: xgrammar_engine(path, eos, vocab)
        for ename, make in engines.items():
            engine = make()
            for kind, spec in (("json", SCHEMA), ("regex", REGEX)):
                log(f"{ename} / {vname} / {kind} ...")
                r = time_row(engine, kind, spec, seqs[kind], args.steps)
                rows.append({"engine": ename, "vocab": vname, "vocab_size": vocab, "workload": kind,
                             **r, "mask_pct_of_step": 100 * r["mask_median_us"] / step_us})
    print_table(rows)
    if args.json:
        meta = {"cpu": cpu_name(), "pinned": args.pin, "edgegen_step_us": step_us, "xgrammar": xgr_reason or "ok"}
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
