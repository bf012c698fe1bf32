"""The digits of tiny-var: scikit-learn's bundled 8×8 digits (1,797 images, no download) as 32×32
RGB images in [-1, 1] (black ink on white), and the small classifier that measures whether a
generated image shows the digit it was asked for."""

from __future__ import annotations

import numpy as np


def digit_images(size: int = 32):
    """(images (N, 3, size, size) float32 in [-1, 1], labels (N,) int64) as torch tensors."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    digits = load_digits()
    ink = torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None]  # (N, 1, 8, 8) in [0, 1]
    ink = F.interpolate(ink, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    images = (1 - 2 * ink).repeat(1, 3, 1, 1)
    return images, torch.tensor(digits.target, dtype=torch.int64)


def image_to_digit_features(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) images in [0, 1] → (N, 64) features on the digits' 0..16 ink scale (8×8 means)."""
    gray = np.asarray(images, dtype=np.float64).mean(-1)
    n, h, w = gray.shape
    cells = gray.reshape(n, 8, h // 8, 8, w // 8).mean((2, 4))
    return ((1 - cells) * 16).reshape(n, 64)


def train_classifier(seed: int = 0):
    """A logistic regression on 80% of the real digits; returns it and its held-out accuracy."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(digits.data, digits.target, test_size=0.2,
                                                        random_state=seed, stratify=digits.target)
    classifier = LogisticRegression(max_iter=2000).fit(x_train, y_train)
    return classifier, float(classifier.score(x_test, y_test))
