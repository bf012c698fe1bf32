"""How many bytes each runtime's KV cache spends per token, for each `KVSpec` (backend-free
arithmetic, shared by the caches, the converter's manifest and `edgegen info`).

ONNX Runtime: float32 by default, or fp16 / int8 / int4 values with static per-channel scales (a
few bytes per layer, not per token). MLX: the model's float type by default, or fp16, or int8 /
int4 values with an fp16 scale and bias per group of `group_size` values (mx.quantize). Every
token is stored the same way (no full-precision window: it would make truncate + re-append differ
from appending once).
"""

from __future__ import annotations

from edgegen.core.protocols import KVSpec

FLOAT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


def kv_bytes_per_token(runtime: str, layers: int, kv_heads: int, head_dim: int, spec: KVSpec | None,
                       float_bytes: int = 4) -> float:
    values = layers * 2 * kv_heads * head_dim  # keys and values, every layer
    bits = None if spec is None else spec.bits
    if bits is None:
        return values * float_bytes
    if bits == 16:
        return values * 2
    per_value = bits / 8
    if runtime == "mlx":
        per_value += 4 / spec.group_size  # fp16 scale + fp16 bias per group
    return values * per_value


def kv_table(runtime: str, layers: int, kv_heads: int, head_dim: int, float_bytes: int) -> dict[str, float]:
    """{"float": …, "16": …, "8": …, "4": …} bytes per token, as the manifest records them."""
    rows = {"float": kv_bytes_per_token(runtime, layers, kv_heads, head_dim, None, float_bytes)}
    for bits in (16, 8, 4):
        rows[str(bits)] = kv_bytes_per_token(runtime, layers, kv_heads, head_dim, KVSpec(bits=bits), float_bytes)
    return rows
