"""TF1-style resize (the original TF FID / torch-fidelity family) and evaluation without logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gan import evaluate
from gan.metrics import evaluator, features
from gan.metrics import inception as inc


def _tf1_bilinear_loop(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """TF1 resize_bilinear(align_corners=False, half_pixel_centers=False), literally, (H, W) input."""
    in_h, in_w = x.shape
    y = np.zeros((out_h, out_w))

    def src(i, n_in, n_out):
        s = i * n_in / n_out
        i0 = int(np.floor(s))
        return i0, min(i0 + 1, n_in - 1), s - i0

    for i in range(out_h):
        h0, h1, a = src(i, in_h, out_h)
        for j in range(out_w):
            w0, w1, b = src(j, in_w, out_w)
            y[i, j] = ((1 - a) * ((1 - b) * x[h0, w0] + b * x[h0, w1])
                       + a * ((1 - b) * x[h1, w0] + b * x[h1, w1]))
    return y


@pytest.mark.parametrize("in_size,out_size", [((8, 5), (19, 13)), ((13, 9), (6, 4)), ((32, 32), (299, 299))])
def test_tf1_resize_matches_the_tf1_rule(in_size, out_size):
    x = np.random.default_rng(0).random((1, *in_size, 2), np.float32)
    got = np.asarray(jax.jit(lambda v: inc.resize_bilinear(v, out_size, mode="tf1"))(x))
    for c in range(2):
        np.testing.assert_allclose(got[0, :, :, c], _tf1_bilinear_loop(x[0, :, :, c].astype(np.float64), *out_size),
                                   rtol=1e-5, atol=1e-5)


def test_tf1_and_torch_rules_by_hand():
    # 2 → 4 pixels. TF1 samples at 0, .5, 1, 1.5 (clamped); torch at -.25→0, .25, .75, 1.25→1.
    x = np.array([[0.0, 4.0]], np.float32).reshape(1, 1, 2, 1)
    tf1 = np.asarray(inc.resize_bilinear(jnp.asarray(x), (1, 4), mode="tf1"))[0, 0, :, 0]
    torch = np.asarray(inc.resize_bilinear(jnp.asarray(x), (1, 4), mode="pytorch_fid"))[0, 0, :, 0]
    np.testing.assert_allclose(tf1, [0.0, 2.0, 4.0, 4.0])
    np.testing.assert_allclose(torch, [0.0, 1.0, 3.0, 4.0])
    with pytest.raises(ValueError, match="resize"):
        inc.resize_bilinear(jnp.asarray(x), (1, 4), mode="bicubic")


def test_preprocess_normalisation_per_family():
    white = jnp.full((1, 4, 4, 3), 255, jnp.uint8)
    black = jnp.zeros((1, 4, 4, 3), jnp.uint8)
    # Interpolation weights sum to 1 up to float32 round-off.
    np.testing.assert_allclose(np.asarray(inc.preprocess(white)), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(inc.preprocess(black)), -1.0, atol=1e-6)
    # The TF graph's own normalisation, (x - 128) / 128: white is 127/128, not 1.
    np.testing.assert_allclose(np.asarray(inc.preprocess(white, resize="tf1")), 127 / 128, atol=1e-6)
    np.testing.assert_allclose(np.asarray(inc.preprocess(black, resize="tf1")), -1.0, atol=1e-6)
    assert inc.preprocess(white, resize="tf1").shape == (1, 299, 299, 3)


def _pool_only_network() -> features.FeatureNetwork:
    w = np.random.default_rng(0).normal(size=(8 * 8 * 3, 16)).astype(np.float32)

    def apply(images):
        x = images.reshape(images.shape[0], -1).astype(jnp.float32) / 255.0
        return {"pool": jnp.tanh(x @ w)}

    identity = {"name": "inception", "sha256": "ab" * 32, "resize": "pytorch_fid", "is_unavailable": "no logits here"}
    return features.FeatureNetwork("inception", apply, identity, is_logits=None)


def test_evaluator_reports_is_unavailable_without_logits(tmp_path):
    rng = np.random.default_rng(1)
    ref = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    settings = evaluator.eval_settings({"eval": {"num_reference": 40, "cache_dir": str(tmp_path), "kid_subsets": 2,
                                                 "kid_subset_size": 10, "pr_num_samples": 20, "batch_size": 16}})
    ev = evaluator.Evaluator(settings, network=_pool_only_network(), reference_images=ref, reference_name="toy")
    report = ev.report(ref)
    assert {"fid_inception", "kid_inception", "precision_inception"} <= set(report["metrics"])
    assert not [k for k in report["metrics"] if k.startswith("is_")]
    assert report["unavailable"] == {"is_inception": "no logits here"}
    assert any("Inception Score not computed" in n for n in report["notes"])
    assert abs(report["metrics"]["fid_inception"]) < 1e-6
    # The reference cache file is keyed by the resize mode and the weights' digest.
    name = report["reference"]["cache_file"]
    assert "inception-pytorch_fid-abababababab" in name
    line = evaluate.summary({**report, "num_samples": 40})
    assert "fid_inception = " in line and "sha256:abababababab" in line and "is_inception: unavailable" in line


def test_eval_settings_validate_resize_and_network():
    with pytest.raises(ValueError, match="eval.resize"):
        evaluator.eval_settings({"eval": {"resize": "antialias"}})
    with pytest.raises(ValueError, match="eval.feature_network"):
        evaluator.eval_settings({"eval": {"feature_network": "clip"}})
    assert evaluator.eval_settings({}).resize == "pytorch_fid"
