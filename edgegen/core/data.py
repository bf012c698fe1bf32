"""The short texts that ship with edgegen (edgegen/_data: see its README for what and why)."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "_data"
CALIBRATION = "kv-calibration.txt"  # calibrates the static KV scales at convert time
HELDOUT = "heldout-eval.txt"  # kv_bits auto and the default text of `edgegen perplexity`


def bundled_text(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")
