"""VAR without a runtime: the resampling matrices, the Φ schedule, config inference from the
released checkpoints' shapes, top-k / top-p, and the next-scale loop on a fake model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgegen.archs import _var as arch
from edgegen.core.errors import ConfigError
from edgegen.core.scale_ar import ScaleAR, ScaleRun
from edgegen.decoding.next_scale import ScaleSampling, filter_logits, generate_scales, guidance

D16 = arch.VARConfig()  # FoundationVision's var_d16 with vae_ch160v4096z32


@pytest.mark.parametrize("pn", arch.KNOWN_SCHEDULES[0])
def test_resampling_matrices_equal_torch_interpolate(pn):
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    down = arch.area_matrix(pn, 16)
    expected = F.interpolate(x, size=(pn, pn), mode="area").numpy()
    np.testing.assert_allclose(np.einsum("ij,bcjk,lk->bcil", down, x.numpy(), down), expected, atol=1e-12, rtol=0)
    small = torch.randn(2, 3, pn, pn, dtype=torch.float64)
    up = arch.bicubic_matrix(16, pn)
    expected = F.interpolate(small, size=(16, 16), mode="bicubic").numpy()
    np.testing.assert_allclose(np.einsum("ij,bcjk,lk->bcil", up, small.numpy(), up), expected, atol=1e-12, rtol=0)


def test_phi_schedule_of_the_released_models():
    assert [arch.phi_index(k, 10, D16.vae) for k in range(10)] == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    shared = dataclasses.replace(D16.vae, phi_layout="shared", phi_count=1)
    assert {arch.phi_index(k, 10, shared) for k in range(10)} == {0}


def test_config_is_read_back_from_the_released_shapes():
    """No config.json ships with var_d16.pth: everything comes from tensor shapes."""
    var = arch.var_shapes(D16)
    vae = {**arch.vae_shapes(D16.vae), "encoder.conv_in.weight": (160, 3, 3, 3)}
    assert arch.infer_config(var, vae) == D16
    params = sum(int(np.prod(s)) for s in var.values())
    assert round(params / 1e6, 2) == 310.28  # the published parameter count of var_d16
    assert D16.num_tokens == 680 and D16.image_size == 256


def test_config_survives_the_manifest():
    assert arch.config_from_dict(D16.to_dict()) == D16
    with pytest.raises(ConfigError, match="malformed"):
        arch.config_from_dict({"depth": 16})


def test_missing_tensors_are_named():
    var = arch.var_shapes(D16)
    del var["head.weight"]
    with pytest.raises(ConfigError, match="lacks head.weight"):
        arch.infer_config(var, arch.vae_shapes(D16.vae))


def upstream_filter(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """top-k then top-p exactly as the architecture description states them."""
    x = logits.clone()
    if top_k:
        x[x < x.topk(top_k, dim=-1).values[..., -1:]] = -torch.inf
    if top_p < 1:
        ranked, order = x.sort(dim=-1, descending=False)
        drop = ranked.softmax(-1).cumsum(-1) <= 1 - top_p
        drop[..., -1:] = False
        x = x.masked_fill(drop.scatter(-1, order, drop), -torch.inf)
    return x


@pytest.mark.parametrize("top_k,top_p", [(0, 0.95), (5, 1.0), (10, 0.5), (64, 0.9), (1, 0.3)])
def test_top_k_top_p_keep_what_upstream_keeps(top_k, top_p):
    logits = torch.randn(3, 7, 64, dtype=torch.float64) * 3
    ours = np.isfinite(filter_logits(logits.numpy(), top_k, top_p))
    np.testing.assert_array_equal(ours, torch.isfinite(upstream_filter(logits, top_k, top_p)).numpy())


class FakeRun:
    def __init__(self, model, ids, guided):
        self.model, self.ids, self.guided, self._scale = model, list(ids), guided, 0
        model.runs.append(self)

    @property
    def scale(self):
        return self._scale

    def logits(self):
        pn = self.model.patch_nums[self._scale]
        rows = len(self.ids) * (2 if self.guided else 1)
        out = np.zeros((rows, pn * pn, self.model.vocab_size), np.float32)
        out[: len(self.ids), :, 1] = 5.0  # the class prefers token 1, the null class token 2
        out[len(self.ids):, :, 2] = 5.0
        return out

    def push(self, tokens):
        assert tokens.shape == (len(self.ids), self.model.patch_nums[self._scale] ** 2)
        self._scale += 1

    def image(self):
        return np.zeros((len(self.ids), 4, 4, 3), np.float32)


class FakeScaleAR:
    patch_nums, vocab_size, num_classes, image_size = (1, 2, 3), 8, 10, 4

    def __init__(self):
        self.runs = []

    def start(self, class_ids, guided):
        return FakeRun(self, class_ids, guided)


def test_the_fake_satisfies_the_protocols():
    model = FakeScaleAR()
    assert isinstance(model, ScaleAR) and isinstance(model.start([1], True), ScaleRun)


def test_guidance_ramps_linearly_from_zero():
    assert [guidance(k, 10, 4.0) for k in (0, 9)] == [0.0, 4.0]
    assert guidance(3, 10, 1.5) == pytest.approx(0.5)


def test_greedy_loop_follows_the_guided_logits():
    model = FakeScaleAR()
    images, tokens = generate_scales(model, [4, 5], ScaleSampling(cfg=2.0, top_k=1, seed=0))
    assert images.shape == (2, 4, 4, 3) and model.runs[0].guided
    assert [t.shape for t in tokens] == [(2, 1), (2, 4), (2, 9)]
    assert all((t == 1).all() for t in tokens)  # (1+t)·5 − t·0 keeps token 1 on top


def test_cfg_zero_runs_the_conditional_rows_only():
    model = FakeScaleAR()
    generate_scales(model, [4], ScaleSampling(cfg=0.0, top_k=1))
    assert not model.runs[0].guided


def test_seeds_make_sampling_reproducible():
    sample = lambda seed: generate_scales(FakeScaleAR(), [1, 2, 3], ScaleSampling(top_k=0, top_p=1.0, seed=seed))[1]  # noqa: E731
    same = [np.array_equal(a, b) for a, b in zip(sample(7), sample(7))]
    assert all(same)
    assert not all(np.array_equal(a, b) for a, b in zip(sample(7), sample(8)))


@pytest.mark.parametrize("kwargs,message", [
    (dict(cfg=-1.0), "--cfg"), (dict(top_k=-2), "--top-k"), (dict(top_p=0.0), "--top-p"), (dict(seed=-1), "--seed"),
])
def test_bad_sampling_options_are_one_line_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ScaleSampling(**kwargs).validated()


def test_class_ids_out_of_range_are_refused():
    with pytest.raises(ConfigError, match="class ids must be in 0..9"):
        generate_scales(FakeScaleAR(), [10])
