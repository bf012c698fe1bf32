"""Write MLX weights: the HF tensors cast to the chosen dtype, optionally quantized with MLX's own
affine quantization (`mlx.nn.quantize`), saved as one safetensors file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgegen.archs._decoder import DecoderConfig
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
        nn.quantize(model, group_size=quant.group_size, bits=quant.bits,
                    class_predicate=quantize_predicate(quant.group_size))
    params = dict(tree_flatten(model.parameters()))
    mx.eval(params)
    mx.save_safetensors(str(out / WEIGHTS), params, metadata={"format": "mlx"})
    return {"weights": WEIGHTS}
