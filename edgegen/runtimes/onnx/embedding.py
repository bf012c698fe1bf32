"""Rows of a converted model's input embedding table, read from its ONNX initializers without
loading the table: a memory map of the external data, dequantized row by row for the 4-bit
`GatherBlockQuantized` table (signed int4, two per byte, low nibble first, one scale per block)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

_NUMPY = {1: np.float32, 10: np.float16, 22: np.uint8}  # ONNX FLOAT, FLOAT16, INT4 (packed bytes)


class EmbeddingTable:
    def __init__(self, folder: Path, model_file: str):
        import onnx

        graph = onnx.load(str(folder / model_file), load_external_data=False).graph
        node = next(n for n in graph.node if "input_ids" in n.input)  # Gather or GatherBlockQuantized
        inits = {t.name: t for t in graph.initializer}
        self.quantized = node.op_type == "GatherBlockQuantized"
        self.table = _array(folder, inits[node.input[0]])
        self.hidden = int(inits[node.input[0]].dims[1])
        if self.quantized:
            self.scales = _array(folder, inits[node.input[2]]).astype(np.float32)  # (vocab, hidden / block)
            self.block = next(a.i for a in node.attribute if a.name == "block_size")

    def rows(self, tokens: Sequence[int]) -> np.ndarray:
        """float32 (len(tokens), hidden)."""
        ids = np.asarray(tokens, dtype=np.int64)
        if not self.quantized:
            return np.asarray(self.table[ids], dtype=np.float32)
        packed = np.asarray(self.table[ids])  # (n, hidden / 2) uint8
        nibbles = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(len(ids), self.hidden).astype(np.int8)
        values = np.where(nibbles > 7, nibbles - 16, nibbles).astype(np.float32)  # two's complement int4
        return (values.reshape(len(ids), -1, self.block) * self.scales[ids][..., None]).reshape(len(ids), self.hidden)


def _array(folder: Path, tensor) -> np.ndarray:
    """The initializer's values: memory-mapped from the external data file, or read inline."""
    from onnx import numpy_helper

    info = {e.key: e.value for e in tensor.external_data}
    if not info:
        return numpy_helper.to_array(tensor)
    dtype = _NUMPY[tensor.data_type]
    dims = list(tensor.dims)
    if tensor.data_type == 22:
        dims[-1] //= 2
    offset, length = int(info.get("offset", 0)), int(info["length"])
    data = np.memmap(folder / info["location"], dtype=np.uint8, mode="r", offset=offset, shape=(length,))
    return data.view(dtype).reshape(dims)
