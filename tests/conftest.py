"""Shared fixtures. No test may touch the network: a socket guard fails any connection attempt,
and the Hugging Face hub runs offline against a temporary cache."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class NetworkAccessError(RuntimeError):
    pass


def _refuse(*args, **kwargs):
    raise NetworkAccessError(f"a test tried to open a network connection: {args[1:] or kwargs}")


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_create_connection = socket.create_connection


def _guarded_connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _refuse(self, address)
    return _real_connect(self, address)


def pytest_configure(config):
    socket.socket.connect = _guarded_connect
    socket.socket.connect_ex = _guarded_connect
    socket.create_connection = _refuse
    os.environ["HF_HUB_CACHE"] = str(Path(config.rootpath) / ".pytest_cache" / "hf-hub-empty")
    os.environ["EDGEGEN_CACHE"] = str(Path(config.rootpath) / ".pytest_cache" / "edgegen-cache")
    # A suite started in the background by a shell without job control (`pytest … &`, nohup) has
    # SIGINT ignored, and so would every process it starts; the tests that stop a run as Ctrl-C
    # does (SIGINT) need the children to get it, as they do under a terminal.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _is_loopback(address) -> bool:
    return isinstance(address, tuple) and address[0] == "127.0.0.1"


@pytest.fixture
def loopback(monkeypatch):
    """Lets one test connect to 127.0.0.1 (a server it started itself) and nowhere else."""

    def connect(self, address):
        return _real_connect(self, address) if _is_loopback(address) else _guarded_connect(self, address)

    def connect_ex(self, address):
        return _real_connect_ex(self, address) if _is_loopback(address) else _guarded_connect(self, address)

    def create_connection(address, *args, **kwargs):
        return _real_create_connection(address, *args, **kwargs) if _is_loopback(address) else _refuse(None, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "create_connection", create_connection)


ARCHS = ("llama", "mistral", "qwen2", "qwen3")
RUNTIMES = ("onnx", "mlx")


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """arch -> (folder, transformers model), built once per session."""
    from checkpoints import build_checkpoint

    cache: dict[str, tuple[Path, object]] = {}

    def get(arch: str):
        if arch not in cache:
            folder = tmp_path_factory.mktemp(f"hf-{arch}")
            cache[arch] = (folder, build_checkpoint(arch, folder))
        return cache[arch]

    return get


@pytest.fixture(scope="session")
def converted(checkpoints, tmp_path_factory):
    """(arch, runtime, quant) -> converted folder, through the real CLI, built once per session."""
    from click.testing import CliRunner

    from edgegen.cli import main

    cache: dict[tuple, Path] = {}

    def get(arch: str, runtime: str, quant: str = "none", *extra: str) -> Path:
        key = (arch, runtime, quant, extra)
        if key not in cache:
            src, _ = checkpoints(arch)
            out = tmp_path_factory.mktemp("conv") / f"{arch}-{runtime}-{quant}"
            result = CliRunner().invoke(main, ["convert", str(src), "-o", str(out), "--runtime", runtime,
                                               "--quant", quant, *extra])
            assert result.exit_code == 0, result.output
            cache[key] = out
        return cache[key]

    return get


@pytest.fixture(scope="session")
def npu_bundles(tmp_path_factory):
    """(bundled model name, *convert flags) -> its NPU bundle (`--target npu`), converted once."""
    from click.testing import CliRunner

    from edgegen.cli import main

    made: dict[tuple, Path] = {}

    def get(name: str, *flags: str) -> Path:
        if (name, flags) not in made:
            out = tmp_path_factory.mktemp("npu") / name
            result = CliRunner().invoke(main, ["convert", name, "-o", str(out), "--target", "npu", *flags])
            assert result.exit_code == 0, result.output
            made[name, flags] = out
        return made[name, flags]

    return get
