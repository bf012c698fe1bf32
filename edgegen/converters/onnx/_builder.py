"""A thin layer over onnx-ir's tape: named nodes, named values, numpy initializers."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx_ir as ir

MS = "com.microsoft"
OPSETS = {"": 21, MS: 1}


class GraphBuilder:
    """Node names follow `/model/layers.{i}/attn/q_proj/MatMul`; value names end in `/output_0`."""

    def __init__(self, consts: GraphBuilder | None = None) -> None:
        """`consts`: the main graph's builder, for a subgraph (an `If` branch) whose constants and
        weights live in the main graph."""
        self.tape = ir.tape.Tape()
        self.inputs: list[ir.Value] = []
        self.outputs: list[ir.Value] = []
        self._consts: dict[tuple, ir.Value] = {}
        self._parent = consts

    def input(self, name: str, dtype: ir.DataType, shape: Sequence[int | str]) -> ir.Value:
        value = ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape(list(shape)))
        self.inputs.append(value)
        return value

    def output(self, value: ir.Value, name: str, dtype: ir.DataType, shape: Sequence[int | str]) -> None:
        value.name, value.type, value.shape = name, ir.TensorType(dtype), ir.Shape(list(shape))
        self.outputs.append(value)

    def weight(self, name: str, array: np.ndarray) -> ir.Value:
        if self._parent is not None:
            return self._parent.weight(name, array)
        return self.tape.initializer(ir.tensor(np.ascontiguousarray(array), name=name), name=name)

    def const(self, values: Sequence[int] | int, dtype=np.int64) -> ir.Value:
        """A small shared int64 constant (shapes, axes)."""
        if self._parent is not None:
            return self._parent.const(values, dtype)
        key = (tuple(np.atleast_1d(values).tolist()), np.ndim(values), np.dtype(dtype).str)
        if key not in self._consts:
            name = f"/model/constants/{np.dtype(dtype).name}/{'_'.join(map(str, key[0]))}/{np.ndim(values)}d"
            self._consts[key] = self.weight(name, np.array(values, dtype=dtype))
        return self._consts[key]

    def op(self, op_type: str, name: str, inputs: Sequence[ir.Value | None], domain: str = "",
           **attributes: Any) -> ir.Value:
        value = self.tape.op(op_type, list(inputs), attributes or None, domain=domain, name=f"{name}/{op_type}")
        value.name = f"{name}/{op_type}/output_0"
        return value

    def ops(self, op_type: str, name: str, inputs: Sequence[ir.Value | None], n_out: int,
            domain: str = "", **attributes: Any) -> Sequence[ir.Value]:
        values = self.tape.op_multi_out(op_type, list(inputs), attributes or None, num_outputs=n_out,
                                        domain=domain, name=f"{name}/{op_type}")
        for i, value in enumerate(values):
            value.name = f"{name}/{op_type}/output_{i}"
        return values

    def graph(self, name: str, outputs: Sequence[ir.Value]) -> ir.Graph:
        """A subgraph with no inputs of its own (it reads the main graph's values)."""
        return ir.Graph([], list(outputs), nodes=self.tape.nodes, name=name)

    def model(self, doc: str, opsets: dict[str, int] | None = None) -> ir.Model:
        graph = ir.Graph(self.inputs, self.outputs, nodes=self.tape.nodes, initializers=self.tape.initializers,
                         opset_imports=opsets or OPSETS, name="edgegen_decoder")
        return ir.Model(graph, ir_version=10, producer_name="edgegen", doc_string=doc)
