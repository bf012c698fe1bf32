"""llama.cpp through llama-cpp-python: GGUF from llama.cpp's own converter, quantized to Q4_0.

The converter script is not in the wheel, so we take it from the llama-cpp-python source
distribution of the installed version (`pip download --no-binary :all: --no-deps`), cached under
~/.cache/edgegen-bench, and run it through `_gguf_convert.py` (which only overrides its
pre-tokenizer lookup). Quantization is `llama_model_quantize` with llama.cpp's default rules.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

from _checkpoint import CACHE_ROOT
from _common import RunStats, cached_build, log, package_key, run_logged, time_greedy

HERE = Path(__file__).resolve().parent
SDIST_DIR = CACHE_ROOT / "sdist"
GGUF_NAME = "model-q4_0.gguf"
Runner = Callable[[list[int], int], RunStats]


def llama_cpp_source() -> Path:
    """vendor/llama.cpp of the installed llama-cpp-python version: converter + gguf-py."""
    version = importlib.metadata.version("llama-cpp-python")
    root = CACHE_ROOT / f"llama.cpp-{version}"
    if (root / "convert_hf_to_gguf.py").exists():
        return root
    sdist = SDIST_DIR / f"llama_cpp_python-{version}.tar.gz"
    if not sdist.exists():
        log(f"    downloading the llama-cpp-python {version} sdist for convert_hf_to_gguf.py ...")
        SDIST_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:",
                        "--no-deps", f"llama-cpp-python=={version}", "-d", str(SDIST_DIR)],
                       check=True, stdout=subprocess.DEVNULL)
    extract_converter(sdist, root)
    return root


def extract_converter(sdist: Path, root: Path) -> None:
    """Extract convert_hf_to_gguf.py, conversion/ and gguf-py/ from vendor/llama.cpp."""
    keep = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            _, sep, rel = member.name.partition("/vendor/llama.cpp/")
            if sep and rel.startswith(keep) and (member.isfile() or member.isdir()):
                member.name = rel
                tar.extract(member, root, filter="data")
    if not (root / "convert_hf_to_gguf.py").exists():
        raise RuntimeError(f"{sdist} has no vendor/llama.cpp/convert_hf_to_gguf.py")


def quantize(src: Path, dst: Path, ftype_name: str = "LLAMA_FTYPE_MOSTLY_Q4_0",
             threads: int = 2) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype_name)
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed ({rc})")


def prepare(ckpt: Path) -> Path:
    def build(out: Path) -> None:
        src = llama_cpp_source()
        out.mkdir(parents=True)
        f16 = out / "model-f16.gguf"
        cmd = [sys.executable, str(HERE / "_gguf_convert.py"), str(src), str(ckpt),
               "--outtype", "f16", "--outfile", str(f16)]
        run_logged(cmd, out / "convert.log")
        log("    quantizing f16 -> Q4_0 with llama_model_quantize ...")
        quantize(f16, out / GGUF_NAME)
        f16.unlink()

    return cached_build("llamacpp-q4_0", ckpt, build, package_key("llama-cpp-python"))


def open_engine(path: Path, threads: int) -> Runner:
    """Llama.eval for the forward passes, llama.cpp's greedy sampler for the argmax."""
    import llama_cpp
    from llama_cpp import Llama

    llm = Llama(str(path / GGUF_NAME), n_ctx=512, n_batch=512, n_ubatch=512,
                n_threads=threads, n_threads_batch=threads, verbose=False)
    sampler = llama_cpp.llama_sampler_init_greedy()
    ctx = llm._ctx.ctx  # noqa: SLF001  (the raw llama_context the sampler reads logits from)

    def sample() -> int:
        return int(llama_cpp.llama_sampler_sample(sampler, ctx, -1))

    def run(prompt: list[int], new_tokens: int) -> RunStats:
        llm.reset()  # n_tokens = 0: the next eval clears the KV cache, no prefix reuse

        def first() -> int:
            llm.eval(prompt)
            return sample()

        def step(tok: int) -> int:
            llm.eval([tok])
            return sample()

        return time_greedy(first, step, len(prompt), new_tokens)

    return run
