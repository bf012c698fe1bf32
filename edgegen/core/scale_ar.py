"""The contract of next-scale (VAR) image models that `edgegen.decoding.next_scale` programs against.

A VAR image is a pyramid of token maps, 1×1 up to n×n; each scale is predicted in one forward pass
over all its tokens, attending to every earlier scale through a KV cache. The runtime owns the
transformer, the KV cache, the multi-scale VQ-VAE state (f̂) and the decoder; the decoding loop owns
guidance and sampling:

    run = model.start(class_ids, guided=True)        # rows: [cond; uncond] when guided
    for scale, side in enumerate(model.patch_nums):
        logits = run.logits()                         # (rows, side², vocab) float32
        tokens = sample(mix(logits), ...)             # (batch, side²)
        run.push(tokens)                              # f̂ += Φ(up(codebook[tokens])); next input
    images = run.image()                              # (batch, H, W, 3) float32 in [0, 1]
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class ScaleRun(Protocol):
    """One batch of images being generated, scale by scale."""

    @property
    def scale(self) -> int:
        """The index of the scale whose logits `logits()` returns next (len(patch_nums) when done)."""
        ...

    def logits(self) -> np.ndarray:
        """Run the transformer over the current scale's inputs (appending their keys and values to
        the cache); float32 (rows, side², vocab). With guidance, rows = 2·batch: the conditional
        rows first, then the unconditional (null-class) rows."""
        ...

    def push(self, tokens: np.ndarray) -> None:
        """Commit this scale's (batch, side²) token ids: accumulate them into f̂ and prepare the
        next scale's inputs."""
        ...

    def image(self) -> np.ndarray:
        """Decode f̂ after the last scale: float32 (batch, height, width, 3) in [0, 1]."""
        ...


@runtime_checkable
class ScaleAR(Protocol):
    """A class-conditional next-scale image model."""

    patch_nums: tuple[int, ...]  # side of each scale's token map, smallest first
    vocab_size: int
    num_classes: int  # class ids 0..num_classes-1; num_classes itself is the null class of CFG
    image_size: int

    def start(self, class_ids: Sequence[int], guided: bool) -> ScaleRun:
        """Begin a batch of images, one per class id."""
        ...
