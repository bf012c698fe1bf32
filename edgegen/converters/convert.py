"""`edgegen convert`: resolve the source, validate, export for one runtime, write atomically."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from tqdm import tqdm

from edgegen.converters.checkpoint import Checkpoint, open_checkpoint
from edgegen.converters.hub import Source, resolve
from edgegen.core.data import CALIBRATION, bundled_text
from edgegen.core.errors import ConfigError
from edgegen.core.manifest import DTYPES, QUANTS, RUNTIMES, Manifest, Quantization
from edgegen.core.outputs import atomic_folder, check_output
from edgegen.runtimes.kv_layout import FLOAT_BYTES, kv_table
from edgegen.tokenizer import TOKENIZER_FILES, Tokenizer

GROUP_SIZES = (32, 64, 128)
TARGETS = ("cpu", "npu")
NPU_QUANTS = {"none": "fp32", "fp16": "fp16", "w8a16": "w8a16", "w4a16": "w4a16"}  # --quant for --target npu -> the bundle's precision


@dataclasses.dataclass(frozen=True)
class ConvertOptions:
    runtime: str = "onnx"
    dtype: str = "fp32"
    quant: str | None = None  # None: "none" (fp32) for CPU graphs and MLX, "fp16" for NPU bundles
    group_size: int | None = None  # default: 32 for ONNX, 64 for MLX (each runtime's usual choice)
    revision: str | None = None
    force: bool = False
    target: str = "cpu"  # onnx: "npu" writes the static-shape bundle (converters/onnx/npu.py)
    context: int | None = None  # target npu: the KV cache's fixed capacity
    chunk: int | None = None  # target npu: inputs per chunk-graph run
    calibration: str | None = None  # target npu, w8a16/w4a16: a UTF-8 text file to calibrate on

    def validated(self) -> "ConvertOptions":
        if self.quant is None:
            return dataclasses.replace(self, quant="fp16" if self.target == "npu" else "none").validated()
        if self.target not in TARGETS:
            raise ConfigError(f"--target {self.target!r} is not one of {', '.join(TARGETS)}")
        if self.target == "npu":
            return self._validated_npu()
        if self.context is not None or self.chunk is not None or self.calibration is not None:
            raise ConfigError("--context, --chunk and --calibration apply to NPU bundles; add --target npu")
        for value, allowed, flag in ((self.runtime, RUNTIMES, "--runtime"), (self.dtype, DTYPES, "--dtype"),
                                     (self.quant, QUANTS, "--quant")):
            if value not in allowed:
                raise ConfigError(f"{flag} {value!r} is not one of {', '.join(allowed)}")
        if self.quant == "none" and self.group_size is not None:
            raise ConfigError("--group-size only applies to --quant q8 or q4; drop it or choose a quantization")
        if self.group_size is not None and self.group_size not in GROUP_SIZES:
            raise ConfigError(f"--group-size must be one of {', '.join(map(str, GROUP_SIZES))}")
        return self

    def _validated_npu(self) -> "ConvertOptions":
        if self.runtime != "onnx":
            raise ConfigError("--target npu writes ONNX graphs; use --runtime onnx")
        if self.quant not in NPU_QUANTS:
            raise ConfigError(f"--quant {self.quant!r} is not offered for NPU bundles; choose "
                              f"{', '.join(NPU_QUANTS)} (none is fp32)")
        if self.dtype != "fp32" or self.group_size is not None:
            raise ConfigError("--dtype and --group-size do not apply to NPU bundles; --quant sets their precision")
        if self.calibration is not None:
            if self.quant not in ("w8a16", "w4a16"):
                raise ConfigError("--calibration applies to --quant w8a16 or w4a16 (float bundles need none)")
            if not Path(self.calibration).expanduser().is_file():
                raise ConfigError(f"--calibration {self.calibration}: no such file; give a UTF-8 text file")
        return self

    def quantization(self) -> Quantization:
        if self.target == "npu":
            return Quantization()
        if self.quant == "none":
            return Quantization()
        return Quantization(self.quant, self.group_size or (32 if self.runtime == "onnx" else 64))


def convert(src: str, out: str | Path, options: ConvertOptions | None = None, **kwargs: Any) -> Path:
    """Convert `src` (folder or hub repo id) into `out`; returns `out`. Nothing is left on failure,
    and `force` replaces only a previous edgegen output or an empty folder."""
    options = (options or ConvertOptions(**kwargs)).validated()
    local = Path(src).expanduser()
    out = check_output(out, force=options.force, sources=[local] if local.exists() else [])
    source = resolve(src, options.revision)
    out = check_output(out, force=options.force, sources=[source.folder])
    from edgegen.converters import var

    if var.is_var_checkpoint(source.folder):  # visual autoregressive image models: their own writer
        with atomic_folder(out) as tmp:
            var.write_var(source, tmp, options)
        return out
    checkpoint = open_checkpoint(source.folder)
    if options.target == "npu" and checkpoint.config.head_dim % 2:
        raise ConfigError(f"head_dim {checkpoint.config.head_dim} is odd; RoPE needs it even")
    if options.target == "npu":
        from edgegen.converters.onnx.npu_export import check_npu_options

        context, chunk = check_npu_options(checkpoint.config, options.context, options.chunk)
        options = dataclasses.replace(options, context=context, chunk=chunk)
    elif options.runtime == "onnx" and options.dtype != "fp32":
        raise ConfigError("ONNX models compute in fp32 on the CPU (weights shrink with --quant q8/q4); "
                          "use --dtype fp32 or --runtime mlx")
    if options.runtime == "onnx" and options.target == "cpu" and checkpoint.config.head_dim % 16:
        raise ConfigError(f"head_dim {checkpoint.config.head_dim} is not a multiple of 16, which ONNX Runtime's "
                          "GroupQueryAttention needs; use --runtime mlx")
    with atomic_folder(out) as tmp:
        _write(checkpoint, source, tmp, options)
    return out


def _write(ckpt: Checkpoint, source: Source, tmp: Path, options: ConvertOptions) -> None:
    quant = options.quantization()
    c = ckpt.config
    steps = 2 + c.num_hidden_layers
    with tqdm(total=steps, desc=f"convert → {options.runtime}", unit="step", leave=False,
              disable=None) as bar:
        bar.set_postfix_str("reading weights")
        tokenizer = _copy_tokenizer(ckpt.folder, tmp)
        _copy_ngram_store(ckpt.folder, tmp)
        weights = ckpt.load_weights()
        bar.update(1)
        if options.target == "npu":
            from edgegen.converters.onnx.npu_export import export_npu

            files = export_npu(c, weights, tmp, context=options.context, chunk=options.chunk,
                               precision=NPU_QUANTS[options.quant], on_stage=bar.set_postfix_str,
                               calibration_ids=_calibration_ids(tokenizer, c, options.calibration))
            bar.update(c.num_hidden_layers)
        elif options.runtime == "onnx":
            from edgegen.converters.onnx.export import export_onnx

            files = export_onnx(c, weights, tmp, quant, on_layer=lambda i: bar.update(1),
                                on_stage=bar.set_postfix_str, calibration_ids=_calibration_ids(tokenizer, c))
            if "genai_model" in files:
                from edgegen.converters.onnx.genai import write_genai_config

                special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_ids": list(tokenizer.eos_token_ids)}
                generation = _read_json_file(ckpt.folder / "generation_config.json")
                written = write_genai_config(tmp, c, files["genai_model"], special, generation)
                if written:
                    files["genai_config"] = written
        else:
            from edgegen.converters.mlx import export_mlx

            files = export_mlx(c, weights, tmp, options.dtype, quant)
            files["config"] = _write_mlx_lm_config(tmp, ckpt.hf_config, options.dtype, quant)
            bar.update(c.num_hidden_layers)
        del weights
        _manifest(ckpt, source, options, quant, tokenizer, files).write(tmp)
        bar.update(1)


def _read_json_file(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _write_mlx_lm_config(folder: Path, hf: dict, dtype: str, quant: Quantization) -> str:
    """config.json as mlx-lm (and mlx-swift's LLM loaders) read a converted folder: the source's
    config, RoPE's fields also where transformers 4 put them, the weights' dtype, and mlx-lm's
    `quantization` entry for q8/q4 weights."""
    import json

    config = {k: v for k, v in hf.items() if k not in ("quantization", "quantization_config")}
    params = config.get("rope_parameters")
    if isinstance(params, dict):  # transformers >= 5 nests RoPE; mlx-lm's llama/qwen2/mistral read the top level
        config.setdefault("rope_theta", params.get("rope_theta", 10000.0))
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
        if scaling.get("rope_type", "default") != "default":
            config.setdefault("rope_scaling", scaling)
    config["torch_dtype"] = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[dtype]
    if quant.bits:
        config["quantization"] = {"group_size": quant.group_size, "bits": quant.bits}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return "config.json"


def _calibration_ids(tokenizer: Tokenizer, c, path: str | None = None, limit: int = 512) -> list[int]:
    """The calibration text (the bundled one, or the first 64k characters of `path`) in the model's
    tokens (valid ids only), at most `limit` of them."""
    if path is None:
        text = bundled_text(CALIBRATION)
    else:
        try:
            with open(Path(path).expanduser(), encoding="utf-8") as f:
                text = f.read(65536)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--calibration {path} cannot be read as UTF-8 text ({exc})") from None
    ids = [i for i in tokenizer.encode(text) if 0 <= i < c.vocab_size]
    return ids[: min(limit, c.context_length)]


def _copy_ngram_store(src: Path, dst: Path) -> None:
    """An n-gram store beside the checkpoint (`ngram/`) travels with it (bundled tiny-chat has one)."""
    store = src / "ngram"
    if (store / "edgegen.json").is_file():
        shutil.copytree(store, dst / "ngram")


def _copy_tokenizer(src: Path, dst: Path) -> Tokenizer:
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    Tokenizer(src)  # fails now, naming the source's files, not at load time, if they are unusable
    return Tokenizer(dst)


def _manifest(ckpt: Checkpoint, source: Source, options: ConvertOptions, quant: Quantization,
              tokenizer: Tokenizer, files: dict[str, str]) -> Manifest:
    origin = ({"repo": source.repo, "revision": source.revision} if source.repo
              else {"path": str(source.folder), "sha256": ckpt.content_hash()})
    c = ckpt.config
    float_bytes = 4 if options.runtime == "onnx" else FLOAT_BYTES[options.dtype]
    kv = {"bytes_per_token": kv_table(options.runtime, c.num_hidden_layers, c.num_key_value_heads, c.head_dim,
                                      float_bytes)}
    npu = {}
    if options.target == "npu":
        from edgegen.core.static_feeds import NEG

        precision = NPU_QUANTS[options.quant]
        npu = {"context": options.context, "chunk": options.chunk, "precision": precision, "mask_value": NEG[precision]}
        kv = {"bytes_per_token": {"float": 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 4}}
    return Manifest(
        family=c.family, architecture=c.model_type, runtime=options.runtime, dtype=options.dtype,
        quantization=quant, context_length=options.context or c.context_length, vocab_size=c.vocab_size,
        target=options.target, npu=npu,
        special_tokens={"bos_token_id": tokenizer.bos_token_id, "eos_token_ids": list(tokenizer.eos_token_ids)},
        source=origin, config=ckpt.hf_config, files=files, kv=kv, diffusion=_diffusion(c, tokenizer))


def _diffusion(c, tokenizer: Tokenizer) -> dict:
    """The diffusion spec with its mask id resolved (from the tokenizer where the config has none)."""
    spec = c.diffusion
    if spec is None:
        return {}
    mask = spec.mask_token_id
    if mask is None:
        mask = tokenizer.token_id(spec.mask_token) if spec.mask_token else None
    if mask is None or not 0 <= mask < c.vocab_size:
        raise ConfigError(f"cannot find the mask token of this {c.model_type} model (no mask_token_id in config.json "
                          f"and no {spec.mask_token!r} in the tokenizer); add mask_token_id to config.json")
    return {**spec.to_dict(), "mask_token_id": int(mask)}
