"""VAR on ONNX Runtime: three sessions (conditioning, cached transformer step, VQ-VAE decoder)
serving `edgegen.runtimes._var.VarEngine`. The KV cache is a list of (keys, values) numpy arrays,
(rows, heads, tokens so far, head_dim) per block, passed in and returned by every step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgegen.archs import _var as arch
from edgegen.core.errors import InferenceError
from edgegen.runtimes.onnx.session import choose_provider, create_session, ort_message


class OnnxVarEngine:
    def __init__(self, folder: Path, config: arch.VARConfig, files: dict[str, str], provider: str | None = None,
                 threads: int | None = None):
        self.config = config
        self.provider = choose_provider(provider)
        self.sessions = {role: create_session(folder / files[role], self.provider, threads)
                         for role in ("cond", "step", "decoder")}
        self.outputs = [o.name for o in self.sessions["step"].get_outputs()]

    def _run(self, role: str, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> list[np.ndarray]:
        try:
            return self.sessions[role].run(outputs, feeds)
        except Exception as exc:  # onnxruntime's Fail / InvalidArgument / RuntimeException
            raise InferenceError(f"ONNX Runtime failed in the VAR {role} graph ({ort_message(exc)}); "
                                 "convert the model again") from None

    def condition(self, cond: np.ndarray) -> Any:
        return self._run("cond", {"class_embeds": np.ascontiguousarray(cond, np.float32)}, ["ada"])[0]

    def new_cache(self) -> list:
        return []

    def forward(self, x: np.ndarray, ada: Any, cache: list, bias: np.ndarray | None = None) -> np.ndarray:
        c = self.config
        rows, length = x.shape[:2]
        if not cache:
            empty = np.zeros((rows, c.num_heads, 0, c.head_dim), np.float32)
            cache.extend([empty, empty] for _ in range(c.depth))
        past = cache[0][0].shape[2]
        feeds = {"inputs_embeds": np.ascontiguousarray(x, np.float32), "ada": ada,
                 "attn_bias": np.zeros((length, past + length), np.float32) if bias is None else bias}
        for i, (k, v) in enumerate(cache):
            feeds[f"past_key.{i}"], feeds[f"past_value.{i}"] = k, v
        results = dict(zip(self.outputs, self._run("step", feeds, self.outputs)))
        for i in range(c.depth):
            cache[i] = [results[f"present_key.{i}"], results[f"present_value.{i}"]]
        return results["logits"]

    def decode(self, f_hat: np.ndarray) -> np.ndarray:
        nchw = np.ascontiguousarray(f_hat.transpose(0, 3, 1, 2), np.float32)
        return self._run("decoder", {"f_hat": nchw}, ["image"])[0]
