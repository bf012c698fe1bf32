"""Read a Hugging Face checkpoint folder safely: config.json and safetensors only (no pickle, no
remote code), validated against the architecture's expected tensor names and shapes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
from pathlib import Path
from typing import Any, Iterator

import ml_dtypes
import numpy as np

from edgegen.archs import arch_module
from edgegen.archs._decoder import DecoderConfig
from edgegen.core.errors import ConfigError, ConversionError
from edgegen.tokenizer import has_tokenizer

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F64": np.float64,
           "I64": np.int64, "I32": np.int32, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


@dataclasses.dataclass
class Checkpoint:
    folder: Path
    hf_config: dict[str, Any]
    config: DecoderConfig
    weight_files: list[Path]

    def tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        """(name, float32 array) for every tensor the architecture uses, file by file."""
        wanted = self.config.weight_shapes()
        for path in self.weight_files:
            for name, array in _read_safetensors(path):
                if name in wanted:
                    yield name, array.astype(np.float32)

    def load_weights(self) -> dict[str, np.ndarray]:
        """The tensors under the shared decoder's names; architectures with their own names or
        layout (LLaDA, BD3-LM) map them with their `convert_weights`."""
        arch = arch_module(self.config.model_type)
        if hasattr(arch, "convert_weights"):
            raw = {name: array.astype(np.float32) for path in self.weight_files
                   for name, array in _read_safetensors(path) if array.dtype.kind == "f" or array.dtype == ml_dtypes.bfloat16}
            weights = arch.convert_weights(raw, self.config)
        else:
            weights = dict(self.tensors())
        _check_shapes(weights, self.config.weight_shapes())
        return weights

    def content_hash(self) -> str:
        """sha256 over config.json and the weight files (identifies a local checkpoint)."""
        h = hashlib.sha256((self.folder / "config.json").read_bytes())
        for path in self.weight_files:
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 24), b""):
                    h.update(block)
        return h.hexdigest()


def open_checkpoint(folder: Path) -> Checkpoint:
    config_path = folder / "config.json"
    if (folder / "genai_config.json").is_file() and not (folder / "model.safetensors").is_file():
        raise ConfigError(f"{folder} is an onnxruntime-genai folder: edgegen runs it as it is (edgegen generate/chat/"
                          "serve DIR); to convert, start from the original checkpoint")
    if not config_path.is_file():
        raise ConfigError(f"{folder} has no config.json; point at a Hugging Face model folder or repo id")
    try:
        hf = json.loads(config_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(f"{config_path} is not valid JSON ({exc})") from None
    model_type = hf.get("model_type")
    if not model_type:
        raise ConfigError(f"{config_path} has no model_type; is it a transformers checkpoint?")
    if "quantization" in hf and isinstance(hf["quantization"], dict) and "bits" in hf["quantization"]:
        raise ConfigError(f"{folder} is an mlx-lm folder ({hf['quantization'].get('bits')}-bit): edgegen runs it as "
                          "it is (edgegen generate/chat/serve DIR); to convert, start from the original checkpoint")
    config = arch_module(model_type).parse_config(hf)
    if not has_tokenizer(folder):
        raise ConfigError(f"{folder} has no tokenizer (tokenizer.json or tokenizer.model); "
                          "copy the tokenizer files next to config.json")
    return Checkpoint(folder, hf, config, _weight_files(folder))


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError) as exc:
            raise ConversionError(f"{index} is malformed ({exc})") from None
        files = [folder / n for n in names]
    else:
        files = sorted(folder.glob("*.safetensors"))
    missing = [f.name for f in files if not f.is_file()]
    if not files or missing:
        pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pth"))
        hint = (f" (found {', '.join(pickles)}: pickled weights are never loaded; "
                "save the model with safetensors)" if pickles else "")
        raise ConversionError(f"{folder} has no safetensors weights{hint}" if not missing
                              else f"{folder} lacks weight shards {', '.join(missing)}")
    return files


def _read_safetensors(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Memory-map a safetensors file (header parsed per the published format, bf16 via ml_dtypes)."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > 100_000_000:
                raise ValueError("header too large")
            header = json.loads(f.read(size))
        data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + size)
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            dtype = np.dtype(_DTYPES[info["dtype"]])
            if end > data.size or end - start != dtype.itemsize * int(np.prod(info["shape"])):
                raise ValueError(f"tensor {name} lies outside the file")
            yield name, data[start:end].view(dtype).reshape(info["shape"])
    except (ValueError, KeyError, struct.error, OSError) as exc:
        raise ConversionError(f"{path.name} is not a valid safetensors file ({exc}); "
                              "download the checkpoint again") from None


def _check_shapes(weights: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]]) -> None:
    missing = [n for n in expected if n not in weights]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ConversionError(f"the checkpoint lacks {', '.join(missing[:3])}{more}; is it complete?")
    for name, shape in expected.items():
        if tuple(weights[name].shape) != shape:
            raise ConversionError(f"{name} has shape {tuple(weights[name].shape)} but config.json implies "
                                  f"{shape}; config and weights do not match")
