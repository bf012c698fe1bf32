"""VAR on MLX: the conditioning, the cached transformer step and the NHWC VQ-VAE decoder as MLX
modules, serving `edgegen.runtimes._var.VarEngine`. The weights file (`var_mlx.safetensors`) holds
this module tree's names; the converter maps FoundationVision's names onto them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgegen.archs import _var as arch
from edgegen.core.errors import ConfigError
from edgegen.core.manifest import Quantization
from edgegen.runtimes.mlx.backend import MX_DTYPES, import_mlx, select_device

WEIGHTS = "var_mlx.safetensors"


def build(config: arch.VARConfig, quant: Quantization | None = None):
    """(VarTransformer, VarDecoder), quantized in structure when `quant` says so."""
    import_mlx()  # a one-line error when MLX is missing
    from edgegen.runtimes.mlx.var.modules import VarDecoder, VarTransformer

    transformer, decoder = VarTransformer(config), VarDecoder(config)
    if quant is not None and quant.bits:
        quantize(transformer, quant)
    return transformer, decoder


def quantize(transformer, quant: Quantization) -> None:
    """MLX affine quantization of the transformer's Linear layers; the logits head (and its AdaLN)
    stays fp32, as upstream keeps it."""
    import mlx.nn as nn

    def predicate(path: str, module) -> bool:
        return (isinstance(module, nn.Linear) and path not in ("head", "head_ada")
                and module.weight.shape[-1] % quant.group_size == 0)

    nn.quantize(transformer, group_size=quant.group_size, bits=quant.bits, class_predicate=predicate)


class MLXVarEngine:
    """`VarEngine` on MLX."""

    def __init__(self, folder: Path, config: arch.VARConfig, dtype: str, quant: Quantization,
                 device: str | None = None):
        self.mx = mx = import_mlx()
        self.device = select_device(device)
        self.config = config
        self.dtype = getattr(mx, MX_DTYPES.get(dtype, "float32"))
        self.transformer, self.decoder = build(config, quant)
        try:
            weights = list(mx.load(str(folder / WEIGHTS)).items())
            self.transformer.load_weights([(k[len("transformer."):], v) for k, v in weights
                                           if k.startswith("transformer.")], strict=True)
            self.decoder.load_weights([(k[len("decoder."):], v) for k, v in weights if k.startswith("decoder.")],
                                      strict=True)
        except (ValueError, RuntimeError, OSError) as exc:
            raise ConfigError(f"{folder / WEIGHTS} could not be loaded ({' '.join(str(exc).split())[:200]}); "
                              "convert the model again") from None
        mx.eval(self.transformer.parameters(), self.decoder.parameters())

    def condition(self, cond: np.ndarray) -> Any:
        ada = self.transformer.condition(self.mx.array(cond).astype(self.dtype))
        self.mx.eval(ada)
        return ada

    def new_cache(self) -> list:
        return [[None, None] for _ in range(self.config.depth)]

    def forward(self, x: np.ndarray, ada: Any, cache: list, bias: np.ndarray | None = None) -> np.ndarray:
        mx = self.mx
        mask = None if bias is None else mx.array(bias).astype(self.dtype)
        logits = self.transformer(mx.array(x).astype(self.dtype), ada, cache, mask)
        mx.eval(logits, [c for pair in cache for c in pair])
        return np.array(logits.astype(mx.float32), copy=False)

    def decode(self, f_hat: np.ndarray) -> np.ndarray:
        image = self.decoder(self.mx.array(f_hat).astype(self.dtype))
        return np.array(image.astype(self.mx.float32), copy=False)
