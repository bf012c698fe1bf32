"""Visual autoregressive (VAR) checkpoints: detection and the writer `edgegen convert` calls.

A VAR source folder holds the transformer (`var*.safetensors` or `var*.pth`) and the multi-scale
VQ-VAE (`vae*.safetensors` or `vae*.pth`), as FoundationVision releases them, and optionally a
config.json (`"model_type": "var"`, class names, `num_heads` where the weights cannot tell it).
The converted folder holds `host.safetensors` (embeddings, codebook, Φ convs; read with numpy by
both runtimes) plus the runtime's files, and an `edgegen.json` with family `var`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from safetensors.numpy import save_file
from tqdm import tqdm

from edgegen.core.errors import ConfigError
from edgegen.core.manifest import Manifest, Quantization
from edgegen.runtimes._var import HOST_FILE


def is_var_checkpoint(folder: Path) -> bool:
    """True when `folder` holds a VAR transformer + multi-scale VQ-VAE checkpoint."""
    from edgegen.converters.var.checkpoint import find_files, read_config_json

    folder = Path(folder)
    if not folder.is_dir():
        return False
    if (folder / "config.json").is_file():
        try:
            return read_config_json(folder).get("model_type") == "var"
        except ConfigError:
            return False
    return find_files(folder) is not None


def check_options(options: Any) -> None:
    if options.runtime == "onnx" and options.dtype == "bf16":
        raise ConfigError("ONNX VAR models compute in fp32 on the CPU and can store weights as fp32 or fp16; "
                          "use --dtype fp32 or fp16, or --runtime mlx for bf16")
    if options.runtime == "onnx" and options.dtype == "fp16" and options.quant != "none":
        raise ConfigError("--dtype fp16 and --quant both shrink ONNX weights; choose one of them")
    if options.runtime == "onnx" and options.quant == "q8" and options.group_size is not None:
        raise ConfigError("ONNX q8 VAR models use per-channel int8 weights; drop --group-size (it applies to q4)")


def quantization(options: Any) -> Quantization:
    """The manifest's record: ONNX q8 is per-channel (no group size), the rest as the options say."""
    if options.runtime == "onnx" and options.quant == "q8":
        return Quantization("q8", None)
    return options.quantization()


def write_var(source: Any, out: Path, options: Any) -> None:
    """Convert the VAR checkpoint in `source.folder` into the (temporary) folder `out`."""
    from edgegen.converters.var.checkpoint import host_tensors, open_var_checkpoint

    check_options(options)
    quant = quantization(options)
    with tqdm(total=3, desc=f"convert VAR → {options.runtime}", unit="step", leave=False, disable=None) as bar:
        bar.set_postfix_str("reading weights")
        ckpt = open_var_checkpoint(Path(source.folder))
        bar.update(1)
        host = host_tensors(ckpt)
        save_file(host, str(out / HOST_FILE))
        if options.runtime == "onnx":
            from edgegen.converters.var.onnx_export import export_onnx

            files = export_onnx(ckpt.config, ckpt.var, ckpt.vae, out, options.dtype, quant, bar.set_postfix_str,
                                calibration=lambda: calibration_maps(ckpt.config, host))
        else:
            from edgegen.converters.var.mlx_export import export_mlx

            bar.set_postfix_str("writing MLX weights")
            files = export_mlx(ckpt.config, ckpt.var, ckpt.vae, out, options.dtype, quant)
        bar.update(1)
        _manifest(ckpt, source, options, quant, {"host": HOST_FILE, **files}).write(out)
        bar.update(1)


def calibration_maps(config: Any, host: dict, count: int = 4, seed: int = 0) -> list:
    """(1, Cvae, h, w) f̂ maps accumulated from random tokens at every scale, as the sampler builds
    them: the activation ranges the int8 decoder is calibrated on."""
    import numpy as np

    from edgegen.runtimes._var import MultiScaleQuantizer

    quantizer, rng, maps = MultiScaleQuantizer(config, host), np.random.default_rng(seed), []
    for _ in range(count):
        f_hat = np.zeros((1, config.latent_size, config.latent_size, config.vae.z_channels), np.float32)
        for k, side in enumerate(config.patch_nums):
            f_hat = quantizer.add(f_hat, k, rng.integers(0, config.vocab_size, (1, side * side)))
        maps.append(np.ascontiguousarray(f_hat.transpose(0, 3, 1, 2)))
    return maps


def _manifest(ckpt: Any, source: Any, options: Any, quant: Quantization, files: dict[str, str]) -> Manifest:
    c = ckpt.config
    if source.repo:
        origin = {"repo": source.repo, "revision": source.revision}
    else:
        digest = hashlib.sha256()
        for path in ckpt.files:
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 24), b""):
                    digest.update(block)
        origin = {"path": str(source.folder), "sha256": digest.hexdigest()}
    names = ckpt.extra.get("class_names")
    config = {**c.to_dict(), "image_size": c.image_size}
    if isinstance(names, list) and len(names) == c.num_classes:
        config["class_names"] = [str(n) for n in names]
    kv_bytes = 2 * c.depth * c.embed_dim * 4  # keys and values of every block, fp32, per token and row
    return Manifest(family="var", architecture="var", runtime=options.runtime, dtype=options.dtype,
                    quantization=quant, context_length=c.num_tokens, vocab_size=c.vocab_size,
                    special_tokens={"null_class": c.num_classes}, source=origin, config=config, files=files,
                    kv={"bytes_per_token": {"float": kv_bytes}})
