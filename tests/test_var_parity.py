"""VAR on both runtimes against the PyTorch reference written from the architecture description:
logits per scale, f̂ after every scale and the decoded image, with the reference's tokens injected
so that the runtimes compare token for token; teacher forcing equals the cached steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import edgegen
from conftest import RUNTIMES
from var_fixtures import VARIANTS, build_reference, convert_cli, save_checkpoint
from var_reference import run_scales

LABELS = [3, 7]
CFG = 2.5


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """variant -> (var, vae, checkpoint folder); runtime conversions cached alongside."""
    cache: dict = {}

    def get(variant: str, runtime: str | None = None, *args: str):
        if variant not in cache:
            var, vae = build_reference(variant)
            cache[variant] = (var, vae, save_checkpoint(var, vae, tmp_path_factory.mktemp(f"var-{variant}")))
        if runtime is None:
            return cache[variant]
        key = (variant, runtime, args)
        if key not in cache:
            out = tmp_path_factory.mktemp("conv") / f"{variant}-{runtime}-{'-'.join(args) or 'fp32'}"
            cache[key] = convert_cli(cache[variant][2], out, "--runtime", runtime, *args)
        return cache[key]

    return get


def reference_run(var, vae, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pick = lambda si, logits: torch.randint(0, logits.shape[-1], logits.shape[:2], generator=g)  # noqa: E731
    return run_scales(var, vae, LABELS, CFG, pick=pick)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_logits_fhat_and_image_match_the_reference(variant, runtime, reference):
    var, vae, _ = reference(variant)
    ref_logits, ref_tokens, ref_fhats, ref_image = reference_run(var, vae)
    model = edgegen.load(reference(variant, runtime))
    run = model.model.start(LABELS, guided=True)
    K = len(ref_logits)
    for k in range(K):
        logits = run.logits()
        expected = ref_logits[k].numpy()
        np.testing.assert_allclose(logits, expected, atol=1e-4 * np.abs(expected).max(), rtol=0)
        run.push(ref_tokens[k].numpy())
        np.testing.assert_allclose(run.f_hat, ref_fhats[k].permute(0, 2, 3, 1).numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(run.image(), ref_image.permute(0, 2, 3, 1).numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_guided_logits_through_the_api(runtime, reference):
    """`ImageModel.generate_tokens` mixes with the released ramp: no guidance at the first scale."""
    var, vae, _ = reference("l2norm")
    ref_logits, ref_tokens, _, _ = reference_run(var, vae, seed=1)
    model = edgegen.load(reference("l2norm", runtime))
    guided, _ = model.generate_tokens(LABELS, [t.numpy() for t in ref_tokens], cfg=CFG)
    K, B = len(ref_logits), len(LABELS)
    for k in range(K):
        t = CFG * k / (K - 1)
        expected = ((1 + t) * ref_logits[k][:B] - t * ref_logits[k][B:]).numpy()
        np.testing.assert_allclose(guided[k], expected, atol=1e-4 * np.abs(expected).max(), rtol=0)
    first = model.model.start(LABELS, guided=True).logits()
    np.testing.assert_array_equal(guided[0], first[:B])  # t = 0: the conditional logits, exactly


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_teacher_forced_block_causal_logits_equal_cached_steps(runtime, reference):
    var, vae, _ = reference("l2norm")
    _, ref_tokens, _, _ = reference_run(var, vae, seed=2)
    tokens = [t.numpy() for t in ref_tokens]
    model = edgegen.load(reference("l2norm", runtime)).model
    whole = model.teacher_forced_logits(LABELS, tokens)  # (B, L, V), one pass
    run, steps = model.start(LABELS, guided=False), []
    for k in range(len(tokens)):
        steps.append(run.logits())
        run.push(tokens[k])
    np.testing.assert_allclose(whole, np.concatenate(steps, 1), atol=1e-5 * np.abs(whole).max(), rtol=0)


def test_reference_teacher_forcing_equals_its_cached_inference(reference):
    """The oracle is consistent with itself: block-causal forward == KV-cached scales."""
    var, vae, _ = reference("l2norm")
    logits, tokens, _, _ = run_scales(var, vae, LABELS, 0.0, pick=lambda si, lg: lg.argmax(-1))
    with torch.no_grad():
        whole = var(torch.tensor(LABELS), vae.quantize.var_input(tokens))
    cached = torch.cat([lg[: len(LABELS)] for lg in logits], 1)
    torch.testing.assert_close(whole, cached, atol=1e-4, rtol=0)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_batch_of_two_equals_two_batches_of_one(runtime, reference):
    model = edgegen.load(reference("l2norm", runtime))
    both = model.generate([2, 5], cfg=1.5, seed=0, top_k=0, top_p=1.0)
    tokens = both.tokens
    for i, label in enumerate([2, 5]):
        _, image = model.generate_tokens([label], [t[i: i + 1] for t in tokens], cfg=1.5)
        np.testing.assert_allclose(image[0] * 255, both.images[i], atol=1.0)


@pytest.mark.parametrize("runtime,args,tolerance", [
    ("onnx", ("--dtype", "fp16"), 0.02), ("onnx", ("--quant", "q8"), 0.08), ("onnx", ("--quant", "q4"), 0.3),
    ("mlx", ("--dtype", "fp16"), 0.05), ("mlx", ("--quant", "q8", "--group-size", "32"), 0.08),
    ("mlx", ("--quant", "q4", "--group-size", "32"), 0.3),
])
def test_smaller_weights_stay_close_to_fp32(runtime, args, tolerance, reference):
    """The same tokens through fp16 / int8 / int4 weights: logits within a fraction of their range."""
    var, vae, _ = reference("l2norm")
    ref_logits, ref_tokens, _, ref_image = reference_run(var, vae, seed=3)
    model = edgegen.load(reference("l2norm", runtime, *args))
    assert model.manifest.quantization.method == (args[1] if args[0] == "--quant" else "none")
    logits, image = model.generate_tokens(LABELS, [t.numpy() for t in ref_tokens], cfg=0.0)
    for k in (0, len(ref_logits) - 1):
        expected = ref_logits[k][: len(LABELS)].numpy()
        error = np.abs(logits[k][: len(LABELS)] - expected).max() / np.abs(expected).max()
        assert error < tolerance, (k, error)
    assert np.abs(image - ref_image.permute(0, 2, 3, 1).numpy()).mean() < tolerance
