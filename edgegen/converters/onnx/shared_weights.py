"""Two graphs of one model reading one weights file: a graph saved after another points its large
initializers at the file the first one wrote, wherever name and value (by digest) are the same."""

from __future__ import annotations

from pathlib import Path

import onnx


def share_weights(proto: onnx.ModelProto, saved: Path, digests: dict[str, str]) -> None:
    """Point `proto`'s large initializers at the weights file `saved` already wrote (where name and
    value, by `digests`, are the same), so the two graphs share one copy on disk."""
    places = {t.name: list(t.external_data) for t in onnx.load(str(saved), load_external_data=False).graph.initializer
              if t.data_location == onnx.TensorProto.EXTERNAL}
    for tensor in proto.graph.initializer:
        if tensor.name in places and digests.get(tensor.name) == _digest(tensor):
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL
            del tensor.external_data[:]
            tensor.external_data.extend(places[tensor.name])


def tensor_digests(proto: onnx.ModelProto) -> dict[str, str]:
    return {t.name: _digest(t) for t in proto.graph.initializer}


def _digest(tensor: onnx.TensorProto) -> str:
    import hashlib

    from onnx import numpy_helper

    value = numpy_helper.to_array(tensor)
    return hashlib.sha256(f"{value.dtype}{value.shape}".encode() + value.tobytes()).hexdigest()

