"""tiny-var, the VAR bundled for the offline default: small, converts for both runtimes, and
`edgegen image --class 3 -o three.png` (no model named, no network) draws a 3."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import RUNTIMES
from edgegen.cli import main
from edgegen.models import BUNDLED, bundled_models

TINY_VAR = BUNDLED / "tiny-var"


def test_tiny_var_is_bundled_within_its_budget():
    assert "tiny-var" in bundled_models()
    assert sum(f.stat().st_size for f in TINY_VAR.rglob("*") if f.is_file()) <= 4 * 2**20


@pytest.fixture(scope="module")
def threes(tmp_path_factory):
    """runtime -> (4, 32, 32, 3) uint8: class 3 through the CLI with no model argument."""
    cache = {}

    def get(runtime: str) -> np.ndarray:
        if runtime not in cache:
            out = tmp_path_factory.mktemp(f"three-{runtime}") / "three.png"
            result = CliRunner().invoke(main, ["image", "--class", "3", "-n", "4", "--seed", "0", "--runtime", runtime,
                                               "-o", str(out)])
            assert result.exit_code == 0, result.output
            assert "scale 6/6" in result.output
            images = []
            for i in range(1, 5):
                with Image.open(out.with_name(f"three-{i}.png")) as image:
                    images.append(np.asarray(image.convert("RGB")))
            cache[runtime] = np.stack(images)
        return cache[runtime]

    return get


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_the_default_model_draws_dark_ink_on_white(runtime, threes):
    images = threes(runtime)
    assert images.shape == (4, 32, 32, 3)
    ink = (images.mean(-1) < 128).mean((1, 2))  # fraction of dark pixels per image
    assert ((ink > 0.05) & (ink < 0.5)).all(), ink
    assert images[:, :, :2].mean() > 200 and images[:, :, -2:].mean() > 200  # white side margins (digits are tall)


def test_the_default_model_draws_threes_a_digit_classifier_recognises(threes):
    sklearn = pytest.importorskip("sklearn", reason="the digit classifier needs scikit-learn")
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    assert sklearn
    digits = load_digits()
    classifier = LogisticRegression(max_iter=2000).fit(digits.data, digits.target)
    gray = threes("onnx").astype(np.float64).mean(-1) / 255.0
    features = ((1 - gray.reshape(4, 8, 4, 8, 4).mean((2, 4))) * 16).reshape(4, 64)
    assert (classifier.predict(features) == 3).sum() >= 3


def test_onnx_and_mlx_agree_on_the_same_tokens(tmp_path):
    import edgegen

    onnx_model, mlx_model = edgegen.load("tiny-var", runtime="onnx"), edgegen.load("tiny-var", runtime="mlx")
    result = onnx_model.generate([3, 8], cfg=4.0, seed=1)
    logits_onnx, image_onnx = onnx_model.generate_tokens([3, 8], result.tokens, cfg=4.0)
    logits_mlx, image_mlx = mlx_model.generate_tokens([3, 8], result.tokens, cfg=4.0)
    for a, b in zip(logits_onnx, logits_mlx):
        np.testing.assert_allclose(a, b, atol=1e-4 * np.abs(a).max(), rtol=0)
    np.testing.assert_allclose(image_onnx, image_mlx, atol=1e-4, rtol=0)
