"""The host side of VAR shared by both runtimes (numpy): inputs of each scale, the f̂ accumulation
of the multi-scale VQ-VAE (codebook lookup, bicubic up, Φ conv, area down, all as fixed matrices),
and the `ScaleRun` loop state. A runtime supplies a `VarEngine`: the conditioning, the cached
transformer step and the decoder.

The host tensors (written by the converter as `host.safetensors`, float32):
    class_emb (classes+1, C)   pos_start (first, C)   lvl_pos (L, C) = lvl_embed[level] + pos_1LC
    word_embed.weight (C, Cvae), .bias (C,)   codebook (V, Cvae)   phi.weight (n, Cvae, Cvae, 3, 3), .bias (n, Cvae)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from edgegen.archs import _var as arch
from edgegen.core.errors import ConfigError

HOST_FILE = "host.safetensors"


class VarEngine(Protocol):
    """What a runtime provides; every array crosses as numpy float32."""

    def condition(self, cond: np.ndarray) -> Any:
        """(rows, C) class embeddings → the runtime's AdaLN parameters for every block and the head."""
        ...

    def new_cache(self) -> Any: ...

    def forward(self, x: np.ndarray, ada: Any, cache: Any, bias: np.ndarray | None = None) -> np.ndarray:
        """(rows, l, C) inputs → (rows, l, V) logits; keys and values are appended to `cache`.
        `bias` (l, P + l) is added to the attention scores (None: every token sees everything)."""
        ...

    def decode(self, f_hat: np.ndarray) -> np.ndarray:
        """(B, h, w, Cvae) f̂ → (B, H, W, 3) float32 image in [0, 1]."""
        ...


def load_host(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return {k: v.astype(np.float32) for k, v in load_file(str(folder / HOST_FILE)).items()}
    except Exception as exc:  # OSError, or safetensors' own SafetensorError for a damaged file
        raise ConfigError(f"{folder / HOST_FILE} could not be read ({' '.join(str(exc).split())[:160]}); "
                          "convert the model again") from None


def resize(x: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(B, n, n, Z) → (B, m, m, Z) with the separable (m, n) map applied to both spatial axes."""
    return np.einsum("ij,bjkz,lk->bilz", matrix, x, matrix, optimize=True).astype(np.float32)


def conv3x3(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """(B, n, n, Z) 'same' 3×3 convolution with an OIHW weight."""
    n = x.shape[1]
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros(x.shape[:3] + (weight.shape[0],), np.float32)
    for dy in range(3):
        for dx in range(3):
            out += padded[:, dy: dy + n, dx: dx + n, :] @ weight[:, :, dy, dx].T
    return out + bias


class MultiScaleQuantizer:
    """f̂ over the scales: f̂ += Φ(bicubic_up(codebook[tokens])) (no resize at the last scale), and
    the next scale's input is area_down(f̂). Matrices and Φ choice are fixed per scale."""

    def __init__(self, config: arch.VARConfig, host: dict[str, np.ndarray]):
        self.config, self.host = config, host
        full, K = config.latent_size, len(config.patch_nums)
        self.up = [arch.bicubic_matrix(full, pn).astype(np.float32) for pn in config.patch_nums]
        self.down = [arch.area_matrix(pn, full).astype(np.float32) for pn in config.patch_nums]
        self.phi = [arch.phi_index(k, K, config.vae) for k in range(K)]

    def add(self, f_hat: np.ndarray, scale: int, tokens: np.ndarray) -> np.ndarray:
        pn = self.config.patch_nums[scale]
        h = self.host["codebook"][tokens].reshape(tokens.shape[0], pn, pn, -1)  # (B, pn, pn, Z)
        if scale != len(self.config.patch_nums) - 1:
            h = resize(h, self.up[scale])
        i = self.phi[scale]
        h = 0.5 * h + 0.5 * conv3x3(h, self.host["phi.weight"][i], self.host["phi.bias"][i])
        return f_hat + h

    def next_input(self, f_hat: np.ndarray, scale: int) -> np.ndarray:
        """(B, pn², Z) for scale `scale` (≥ 1), from the running f̂."""
        z = resize(f_hat, self.down[scale])
        return z.reshape(z.shape[0], -1, z.shape[-1])


class VarRun:
    """`edgegen.core.scale_ar.ScaleRun` over a `VarEngine`."""

    def __init__(self, model: "VarModel", class_ids: Sequence[int], guided: bool):
        c, host = model.config, model.host
        self.model, self.engine, self.config = model, model.engine, c
        self.batch = len(class_ids)
        ids = np.asarray(class_ids, dtype=np.int64)
        if guided:
            ids = np.concatenate([ids, np.full_like(ids, c.num_classes)])
        self.rows = len(ids)
        cond = host["class_emb"][ids]  # (rows, C)
        self.ada = self.engine.condition(cond)
        self.cache = self.engine.new_cache()
        first = c.patch_nums[0] ** 2
        self.x = (cond[:, None] + host["pos_start"][None] + host["lvl_pos"][None, :first]).astype(np.float32)
        self.f_hat = np.zeros((self.batch, c.latent_size, c.latent_size, c.vae.z_channels), np.float32)
        self.starts = c.scale_starts()
        self._scale = 0

    @property
    def scale(self) -> int:
        return self._scale

    def logits(self) -> np.ndarray:
        if self._scale >= len(self.config.patch_nums):
            raise RuntimeError("every scale has been generated; call image()")
        return self.engine.forward(self.x, self.ada, self.cache)

    def push(self, tokens: np.ndarray) -> None:
        k, c = self._scale, self.config
        tokens = np.asarray(tokens, dtype=np.int64).reshape(self.batch, c.patch_nums[k] ** 2)
        self.f_hat = self.model.quantizer.add(self.f_hat, k, tokens)
        self._scale += 1
        if self._scale < len(c.patch_nums):
            z = self.model.quantizer.next_input(self.f_hat, self._scale)
            host = self.model.host
            x = z @ host["word_embed.weight"].T + host["word_embed.bias"]
            x = x + host["lvl_pos"][self.starts[self._scale]: self.starts[self._scale + 1]]
            self.x = np.tile(x.astype(np.float32), (self.rows // self.batch, 1, 1))

    def image(self) -> np.ndarray:
        if self._scale != len(self.config.patch_nums):
            raise RuntimeError("image() needs every scale pushed first")
        return self.engine.decode(self.f_hat)


class VarModel:
    """`edgegen.core.scale_ar.ScaleAR` for a converted VAR folder, over a runtime's engine."""

    def __init__(self, config: arch.VARConfig, host: dict[str, np.ndarray], engine: VarEngine):
        self.config, self.host, self.engine = config, host, engine
        self.quantizer = MultiScaleQuantizer(config, host)
        self.patch_nums = config.patch_nums
        self.vocab_size = config.vocab_size
        self.num_classes = config.num_classes
        self.image_size = config.image_size

    def start(self, class_ids: Sequence[int], guided: bool) -> VarRun:
        return VarRun(self, class_ids, guided)

    def teacher_forced_logits(self, class_ids: Sequence[int], tokens: Sequence[np.ndarray]) -> np.ndarray:
        """All scales in one block-causal forward pass (no guidance): (B, L, V) logits for the given
        (B, pn²) tokens of every scale but the last, which only its inputs need."""
        run = VarRun(self, class_ids, guided=False)
        inputs = [run.x]
        for k in range(len(self.patch_nums) - 1):
            run.push(tokens[k])
            inputs.append(run.x)
        level = np.repeat(np.arange(len(self.patch_nums)), [p * p for p in self.patch_nums])
        bias = np.where(level[:, None] >= level[None, :], 0.0, -1e9).astype(np.float32)
        return self.engine.forward(np.concatenate(inputs, 1), run.ada, self.engine.new_cache(), bias)
