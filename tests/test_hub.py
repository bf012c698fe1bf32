"""Hub sources resolve through huggingface_hub's real cache, offline."""

from __future__ import annotations

import json
import shutil

import pytest

import edgegen
from edgegen.core.errors import ConversionError

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture()
def hub_cache(checkpoints, tmp_path, monkeypatch):
    """A Hugging Face cache holding `edgegen-tests/tiny-qwen2` at main, as a download leaves it."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub"
    repo = cache / "models--edgegen-tests--tiny-qwen2"
    shutil.copytree(checkpoints("qwen2")[0], repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_cached_repo_converts_offline_and_records_its_revision(hub_cache, tmp_path):
    out = edgegen.convert("edgegen-tests/tiny-qwen2", tmp_path / "out", runtime="onnx")
    source = json.loads((out / "edgegen.json").read_text())["source"]
    assert source == {"repo": "edgegen-tests/tiny-qwen2", "revision": COMMIT}
    assert edgegen.load(out).generate("hi", max_tokens=2, ignore_eos=True).stats.generated_tokens == 2


def test_unknown_revision_offline_is_a_clear_error(hub_cache, tmp_path):
    with pytest.raises(ConversionError, match="offline"):
        edgegen.convert("edgegen-tests/tiny-qwen2", tmp_path / "out", revision="v9")
    assert not (tmp_path / "out").exists()


def test_local_folder_records_a_content_hash(converted):
    source = json.loads((converted("qwen2", "onnx") / "edgegen.json").read_text())["source"]
    assert len(source["sha256"]) == 64 and source["path"]
