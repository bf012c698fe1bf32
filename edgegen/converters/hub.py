"""Resolve a model source: a local folder, or a Hugging Face hub repo id (downloaded with
huggingface_hub, honouring HF_HUB_OFFLINE, the HF cache and revisions)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from edgegen.core.errors import ConversionError

ALLOW_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja", "*.txt", "*.md"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclasses.dataclass
class Source:
    folder: Path
    repo: str | None = None  # hub repo id, when it came from the hub
    revision: str | None = None  # resolved commit


def resolve(src: str, revision: str | None = None) -> Source:
    path = Path(src).expanduser()
    if path.is_dir():
        if revision is not None:  # refused rather than ignored
            raise ConversionError(f"--revision picks a revision of a hub repo, and {src} is a local folder; drop it")
        return Source(path.resolve())
    if not _REPO_ID.match(src):
        raise ConversionError(f"{src} is neither a folder nor a Hugging Face repo id (owner/name); "
                              "check the path")
    return _download(src, revision)


def _download(repo: str, revision: str | None) -> Source:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    try:
        folder = Path(snapshot_download(repo, revision=revision, allow_patterns=ALLOW_PATTERNS))
    except LocalEntryNotFoundError:
        raise ConversionError(f"{repo} is not in the Hugging Face cache and the hub cannot be reached "
                              "(offline or HF_HUB_OFFLINE=1); download it once with network, "
                              "or pass a local folder") from None
    except RepositoryNotFoundError:
        raise ConversionError(f"{repo} does not exist on the Hugging Face hub (or needs a token: "
                              "`hf auth login`)") from None
    except RevisionNotFoundError:
        raise ConversionError(f"{repo} has no revision {revision!r}") from None
    return Source(folder, repo=repo, revision=folder.name)
