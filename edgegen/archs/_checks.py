"""The numbers a checkpoint's config.json gives, checked as they are read: every architecture reads
its sizes through these, so that a corrupt value is one ConfigError naming the field, raised before
anything is sized from it (per-layer loops, tensor shapes, the RoPE tables of the context length).

Sizes are positive integers: JSON integers, or floats that are whole numbers (2.0); never bools,
strings, or 1e30. Bounds sit far above every released model and only where a value sizes work
before the weights can contradict it: layers (the expected tensor names) and positions (RoPE
tables). Any other size the weights' shapes check (converters/checkpoint.py).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from edgegen.core.errors import ConfigError

MAX_SIZE = 2**31 - 1  # any one dimension (int32 indexing); the largest real ones are ~10^5-10^6
MAX_LAYERS = 1024  # the deepest released decoders have ~130 layers
MAX_CONTEXT = 1 << 24  # 16M positions; released models reach 10M
HINT = "the checkpoint's config is corrupt or not one edgegen reads"
REQUIRED = object()


def lacks(field: str) -> ConfigError:
    return ConfigError(f"config.json lacks the field {field!r}; is it a complete checkpoint?")


def bad_value(field: str, what: str, value: Any) -> ConfigError:
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:36] + " ..."
    return ConfigError(f"config.json: {field} must be {what}, got {shown}; {HINT}")


def config_int(hf: Mapping[str, Any], key: str, default: Any = REQUIRED, *, low: int = 1, high: int = MAX_SIZE,
               name: str | None = None) -> Any:
    """`hf[key]` as an int in [low, high]; a missing or null field gives `default` (an error when
    there is none). `name`: the field as the message calls it, where it is not `key`."""
    value = hf.get(key)
    if value is None:
        if default is REQUIRED:
            raise lacks(name or key)
        return default
    return check_int(name or key, value, low=low, high=high)


def is_whole(value: Any) -> bool:
    """An int (not a bool) or a float that is a whole number."""
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, float) and math.isfinite(value) and value.is_integer())


def check_int(field: str, value: Any, *, low: int = 1, high: int = MAX_SIZE) -> int:
    whole = is_whole(value)
    if whole and low <= value <= high:
        return int(value)
    what = {0: "a non-negative integer", 1: "a positive integer"}.get(low, f"an integer of at least {low}")
    if whole and value > high:
        what += f" no larger than {high}"
    raise bad_value(field, what, value)


def config_float(hf: Mapping[str, Any], key: str, default: Any = REQUIRED, *, name: str | None = None) -> float:
    """`hf[key]` as a positive finite float (an int is fine; a bool or string is not)."""
    value = hf.get(key)
    if value is None:
        if default is REQUIRED:
            raise lacks(name or key)
        return default
    number = float(value) if isinstance(value, float) or (is_whole(value) and abs(value) < 2**1023) else math.nan
    if math.isfinite(number) and number > 0:
        return number
    raise bad_value(name or key, "a positive number", value)
