"""Run llama.cpp's own `convert_hf_to_gguf.py` on a checkpoint whose BPE it does not recognise.

The script identifies a BPE pre-tokenizer by hashing how it splits a fixed text, and refuses
tokenizers it has never seen, like the small one trained for the benchmark. Ours uses Qwen2's
split regex, so we import the script as a module, make its lookup answer "qwen2", and call its
`main()` unchanged.

usage: python _gguf_convert.py LLAMA_CPP_DIR [convert_hf_to_gguf.py arguments ...]
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

PRE_TOKENIZER = "qwen2"


def load_script(llama_cpp_dir: Path) -> ModuleType:
    script = llama_cpp_dir / "convert_hf_to_gguf.py"
    sys.path.insert(0, str(llama_cpp_dir))  # its `conversion` package (newer llama.cpp)
    spec = importlib.util.spec_from_file_location("convert_hf_to_gguf", script)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {script}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["convert_hf_to_gguf"] = module
    spec.loader.exec_module(module)
    return module


def model_classes(module: ModuleType) -> list[type]:
    """Classes that define the pre-tokenizer lookup, wherever this llama.cpp version keeps them."""
    found = [getattr(module, n) for n in ("TextModel", "Model") if hasattr(module, n)]
    try:
        base = importlib.import_module("conversion.base")
        found += [getattr(base, n) for n in ("TextModel", "ModelBase") if hasattr(base, n)]
    except ImportError:
        pass
    return [c for c in found if isinstance(c, type) and "get_vocab_base_pre" in vars(c)]


def patch_pre_tokenizer(module: ModuleType, name: str = PRE_TOKENIZER) -> None:
    classes = model_classes(module)
    if not classes:
        raise SystemExit("convert_hf_to_gguf: no get_vocab_base_pre found to override")
    for cls in classes:
        cls.get_vocab_base_pre = lambda self, tokenizer: name


def main() -> None:
    llama_cpp_dir = Path(sys.argv[1])
    module = load_script(llama_cpp_dir)
    patch_pre_tokenizer(module)
    sys.argv = [str(llama_cpp_dir / "convert_hf_to_gguf.py"), *sys.argv[2:]]
    module.main()


if __name__ == "__main__":
    main()
