"""Write MLX weights: the HF tensors cast to the chosen dtype, optionally quantized with MLX's own
affine quantization (`mlx.nn.quantize`), saved as one safetensors file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgegen.archs._decoder import DecoderConfig
from edgegen.core.errors import ConfigError
from edgegen.core.manifest import Quantization
from edgegen.runtimes.mlx.backend import MX_DTYPES, WEIGHTS, build_model, import_mlx, quantize_predicate


def export_mlx(config: DecoderConfig, weights: dict[str, np.ndarray], out: Path, dtype: str,
               quant: Quantization) -> dict[str, str]:
    mx = import_mlx()
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    model = build_model(config)
    target = getattr(mx, MX_DTYPES[dtype])
    model.load_weights([(name, mx.array(array).astype(target)) for name, array in weights.items()], strict=True)
    if quant.bits:
        _check_quantizable(model, quant)
        nn.quantize(model, group_size=quant.group_size, bits=quant.bits,
                    class_predicate=quantize_predicate(quant.group_size))
    params = dict(tree_flatten(model.parameters()))
    mx.eval(params)
    mx.save_safetensors(str(out / WEIGHTS), params, metadata={"format": "mlx"})
    return {"weights": WEIGHTS}


def _check_quantizable(model, quant: Quantization) -> None:
    """MLX quantizes a layer only where --group-size divides its input width: none at all is a
    q4/q8 model in name only (refused); some left in float are said in one line."""
    import sys

    import mlx.nn as nn

    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))]
    kept = sorted({int(m.weight.shape[-1]) for _, m in layers if m.weight.shape[-1] % quant.group_size})
    if layers and len(kept) and all(m.weight.shape[-1] % quant.group_size for _, m in layers):
        fits = [g for g in (128, 64, 32) if all(w % g == 0 for w in kept)]
        raise ConfigError(f"--group-size {quant.group_size} divides none of this model's layer widths "
                          f"({', '.join(map(str, kept))}), so nothing would be quantized; choose "
                          + (f"--group-size {fits[0]}" if fits else "a group size that divides them"))
    if kept:
        left = sum(1 for _, m in layers if m.weight.shape[-1] % quant.group_size)
        print(f"edgegen: {left} of {len(layers)} layers are kept in float: their input widths "
              f"({', '.join(map(str, kept))}) are not multiples of --group-size {quant.group_size}", file=sys.stderr)
