"""Tests of paper.measures (the paper's section-3 measurements) and its command line.

References are independent of the code under test: a NumPy forward pass with
per-channel padding written from the padding rules (tests/reference.py), and
closed forms for the geometry of stacks of all-ones kernels.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from classify import models as classify_models
from classify import state as classify_state
from configs.classify import resnet_cifar as resnet_config
from paper import measures
from paper.analysis.__main__ import main
from tests.reference import reference_conv, reference_pads

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------
# An independent NumPy forward pass of PlainStack.
# ----------------------------------------------------------------------------


def xla_same_pads(size: int, k: int, stride: int) -> tuple[int, int]:
    """TensorFlow/XLA 'SAME': total max((ceil(n/s) - 1) s + k - n, 0), the odd zero at the end."""
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def numpy_plain_stack(x, params, kind, stage_sizes, downsample):
    """Conv outputs of PlainStack(kind, stage_sizes, downsample) with ReLU between, float64."""
    k = int(kind[1])
    symmetric = kind.endswith("sp")
    outputs = []
    layer = 0
    for stage, size in enumerate(stage_sizes):
        for i in range(size):
            w = np.asarray(params["params"][f"conv{layer}"]["kernel"], np.float64)
            stride = 1
            if stage > 0 and i == 0:
                mode = downsample
                if mode == "auto":
                    mode = "pool" if k % 2 == 0 else "stride"
                if mode == "stride":
                    stride = 2
                else:
                    n, h, wd, c = x.shape
                    x = x.reshape(n, h // 2, 2, wd // 2, 2, c).mean(axis=(2, 4))
            channels = x.shape[-1]
            if symmetric:
                # Symmetric padding: stride-1 pads per channel, then subsample.
                pads = reference_pads(channels, (k, k), (1, 1), 1)
            else:
                pads = [[xla_same_pads(x.shape[1], k, stride), xla_same_pads(x.shape[2], k, stride)]] * channels
            y = reference_conv(x, w, (stride, stride), (1, 1), pads=pads)
            outputs.append(y)
            x = np.maximum(y, 0)
            layer += 1
    return outputs


@pytest.mark.parametrize(
    "kind, downsample",
    [("C2", "stride"), ("C2sp", "stride"), ("C3", "stride"), ("C4", "stride"), ("C4sp", "stride"), ("C2sp", "pool")],
)
def test_q_values_equal_numpy_forward(kind, downsample):
    stage_sizes = (2, 1)
    model = measures.PlainStack(kind, stage_sizes=stage_sizes, widths=(4, 8), downsample=downsample)
    images = np.random.default_rng(0).normal(size=(3, 8, 8, 3)).astype(np.float32)
    params = model.init(measures.init_key(1, 0), jnp.asarray(images[:1]))
    # batch_size 2 for 3 images also checks the padded last batch.
    q = measures.q_values(model.apply, params, images, batch_size=2)
    ref = numpy_plain_stack(images.astype(np.float64), params, kind, stage_sizes, downsample)
    expected = np.array([np.abs(y).mean() for y in ref])
    assert q.shape == (3,)
    np.testing.assert_allclose(q, expected, rtol=1e-5)
    maps = measures.mean_maps(model.apply, params, images, transform="relu", batch_size=2)
    assert [m.shape for m in maps] == [(8, 8), (8, 8), (4, 4)]
    np.testing.assert_allclose(maps[-1], np.maximum(ref[-1], 0).mean(axis=(0, 3)), rtol=1e-5, atol=1e-7)


def test_plain_resnet56_is_the_papers_figure3_network():
    model = measures.plain_resnet("C2sp")
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    maps = jax.eval_shape(model.apply, params, x)
    sizes = [m.shape[1:] for m in maps]
    assert len(maps) == 55
    assert sizes == [(32, 32, 16)] * 19 + [(16, 16, 32)] * 18 + [(8, 8, 64)] * 18
    # Downsampled after layer indexes 18 and 36 (paper, Fig. 3).
    assert measures.stage_ends([m.shape for m in maps]) == [18, 36, 54]
    # Only conv kernels, no biases or norms: 2x2 x Cin x Cout per layer.
    cins = [3] + [16] * 19 + [32] * 18 + [64] * 17
    couts = [16] * 19 + [32] * 18 + [64] * 18
    count = sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params))
    assert count == sum(4 * a * b for a, b in zip(cins, couts))


def test_he_initialization_variance():
    model = measures.PlainStack("C3", stage_sizes=(2,), widths=(64,))
    params = model.init(measures.init_key(0, 0), jnp.zeros((1, 8, 8, 64)))
    kernel = np.asarray(params["params"]["conv1"]["kernel"])
    np.testing.assert_allclose(kernel.var(), 2.0 / (9 * 64), rtol=0.05)


def test_plain_resnet_rejects_bad_depth():
    with pytest.raises(ValueError, match="depth"):
        measures.plain_resnet("C3", depth=9)


# ----------------------------------------------------------------------------
# Geometry.
# ----------------------------------------------------------------------------


def test_centroid_closed_forms():
    m = np.zeros((2, 5, 7))
    m[0, 1, 6] = 3.0
    m[1, 0, 0] = m[1, 4, 2] = 1.0  # midpoint (2, 1)
    np.testing.assert_allclose(measures.center_of_mass(m), [[1, 6], [2, 1]])
    np.testing.assert_allclose(measures.centroid(m), [[1 - 2, 6 - 3], [0, 1 - 3]])
    np.testing.assert_allclose(measures.extent(m), [[0, 0], [2, 1]])
    assert np.isnan(measures.centroid(np.zeros((3, 3)))).all()
    with pytest.raises(ValueError, match="non-negative"):
        measures.centroid(-np.ones((3, 3)))


def test_feature_map_shift_scales_by_stride():
    # Pixel 0 of a 4x4 map of an 8x8 input stands for input 0.5; the centre is 3.5.
    m = np.zeros((4, 4))
    m[0, 3] = 1.0
    np.testing.assert_allclose(measures.feature_map_shift([m], input_size=(8, 8)), [[-3.0, 3.0]])
    assert measures.unit_position(4, 8, 0) == 0.5


def ones_stack(kind, n, channels):
    return measures.PlainStack(
        kind, stage_sizes=(n,), widths=(channels,), activation=False, kernel_init=nn.initializers.ones
    )


#: Per-layer variance of the channel-summed all-ones kernel's tap offsets, per axis:
#: C2: taps {0, 1} -> 1/4; C2sp: half the channels {0, 1}, half {-1, 0} -> 1/2;
#: C3: {-1, 0, 1} -> 2/3; C4: {-1, ..., 2} -> 5/4; C4sp: {-1..2} and {-2..1} -> 5/4 + 1/4.
LAYER_VARIANCE = {"C2": 0.25, "C2sp": 0.5, "C3": 2 / 3, "C4": 1.25, "C4sp": 1.5}


@pytest.mark.parametrize("kind", ["C2", "C2sp", "C3", "C4", "C4sp"])
def test_impulse_and_receptive_field_of_all_ones_stack(kind, n=5, channels=8):
    """XLA 'SAME' pads an even kernel (0, 1): a C2 layer computes y[p] = x[p] + x[p + 1].

    So an impulse at q reaches p in {q - 1, q}: content moves half a pixel up/left
    per layer (n/2 after n layers), while output p sees inputs p .. p + n, half a
    pixel per layer down/right. Symmetric padding cancels both; odd kernels never shift.
    """
    model = ones_stack(kind, n, channels)
    x = jnp.zeros((1, 33, 33, channels))  # big enough that no edge is reached
    params = model.init(measures.init_key(0, 0), x)
    drift = n / 2 if kind in ("C2", "C4") else 0.0

    maps, impulse = measures.impulse_response(model.apply, params, x)
    assert impulse.shape == (n, 2) and [m.shape for m in maps] == [(33, 33)] * n
    layers = np.arange(1, n + 1)[:, None]
    np.testing.assert_allclose(impulse, -(drift / n) * layers * np.ones((1, 2)), atol=1e-4)

    rf_maps, offsets, extents = measures.receptive_field(model.apply, params, x)
    assert len(rf_maps) == n and rf_maps[0].shape == (33, 33)
    np.testing.assert_allclose(offsets, (drift / n) * layers * np.ones((1, 2)), atol=1e-4)
    np.testing.assert_allclose(extents, np.sqrt(LAYER_VARIANCE[kind] * layers) * np.ones((1, 2)), rtol=1e-4)


@pytest.mark.parametrize("kind, per_layer", [("C2", -0.5), ("C2sp", 0.0), ("C3", 0.0)])
def test_mean_activation_map_drifts_half_a_pixel_per_c2_layer(kind, per_layer):
    n, channels = 5, 8
    model = ones_stack(kind, n, channels)
    # A positive blob centred on the 32x32 map: the all-ones stack keeps it positive, so ReLU is the identity.
    yy, xx = np.mgrid[:32, :32]
    blob = np.exp(-((yy - 15.5) ** 2 + (xx - 15.5) ** 2) / 8.0)
    images = np.broadcast_to(blob[None, :, :, None], (2, 32, 32, channels)).astype(np.float32)
    params = model.init(jax.random.PRNGKey(0), jnp.asarray(images[:1]))
    maps = measures.mean_maps(model.apply, params, images, transform="relu")
    shift = measures.feature_map_shift(maps, input_size=(32, 32))
    expected = per_layer * np.arange(1, n + 1)[:, None] * np.ones((1, 2))
    np.testing.assert_allclose(shift, expected, atol=1e-3)


def test_stage_ends():
    shapes = [(1, 8, 8, 4)] * 3 + [(1, 4, 4, 8)] * 2 + [(1, 2, 2, 8)]
    assert measures.stage_ends(shapes) == [2, 4, 5]


def test_module_outputs_records_every_conv_in_call_order():
    model = measures.PlainStack("C2sp", stage_sizes=(2, 2), widths=(4, 8))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 3)), jnp.float32)
    params = model.init(measures.init_key(0, 0), x)
    recorded = jax.jit(measures.module_outputs(model))(params, x)
    direct = model.apply(params, x)
    assert len(recorded) == len(direct) == 4
    for a, b in zip(recorded, direct):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_module_outputs_on_classify_resnet():
    model = classify_models.resnet_cifar(depth=8, kernel="C2sp")
    x = jnp.zeros((1, 16, 16, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
    maps = jax.eval_shape(measures.module_outputs(model, train=False), variables, x)
    # One recorded output per conv kernel (4-D) in the parameters: spatial convs and 1x1 projections.
    kernels = [p for p in jax.tree_util.tree_leaves(variables["params"]) if p.ndim == 4]
    assert len(maps) == len(kernels) > 0


# ----------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------

SMALL = ["--num_images=4", "--inits=1", "--depth=8", "--kinds=C2sp", "--batch_size=4"]


def write_image_archive(path: Path) -> Path:
    """A tiny CIFAR-like archive: top/test/<class>/<n>.png, 2 classes x 3 images of 16x16."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = path / "build" / "tiny-jpeg" / "test"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    archive = path / "tiny-test.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(path / "build" / "tiny-jpeg", arcname="tiny-jpeg")
    return archive


@pytest.mark.slow
def test_cli_q_curves_on_an_image_archive(tmp_path):
    archive = write_image_archive(tmp_path)
    out = tmp_path / "out"
    payload = main(["q-curves", f"--out={out}", *SMALL, "--kinds=C2,C2sp", f"--data={archive}",
                    f"--cache_dir={tmp_path / 'cache'}"])
    assert payload["data"]["image_shape"] == [16, 16, 3] and payload["data"]["num_images"] == 4
    for name in ("q_curves.png", "q_curves.csv", "q_curves.json", "q_last_layer_maps.png"):
        assert (out / name).stat().st_size > 0
    data = json.loads((out / "q_curves.json").read_text())
    assert data["num_layers"] == 7 and data["stage_ends"] == [2, 4, 6]
    assert len(data["kinds"]["C2sp"]["q_mean"]) == 7
    assert np.all(np.isfinite(data["kinds"]["C2"]["q_mean"]))
    rows = (out / "q_curves.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 7 and rows[0].startswith("layer,height,width,C2_mean")
    final = {kind: data["kinds"][kind]["q_mean"][-1] for kind in ("C2", "C2sp")}
    assert payload["claims"]["c2sp_above_c2_at_end"] is bool(final["C2sp"] > final["C2"])


@pytest.mark.slow
def test_cli_shift(tmp_path):
    main(["shift", f"--out={tmp_path}", *SMALL, "--data=synthetic", "--image_size=16"])
    for name in ("shift.json", "shift.csv", "shift_maps.png", "shift_per_layer.png"):
        assert (tmp_path / name).stat().st_size > 0
    data = json.loads((tmp_path / "shift.json").read_text())
    stage = np.asarray(data["kinds"]["C2sp"]["stage_offsets_mean"])
    assert stage.shape == (3, 2) and np.all(np.isfinite(stage))


@pytest.mark.slow
def test_cli_receptive_field_on_classify_model(tmp_path):
    main(["receptive-field", f"--out={tmp_path}", *SMALL, "--data=synthetic", "--image_size=16",
          "--num_images=2", "--layers=stages", "--model=classify"])
    for name in ("receptive_field.json", "receptive_field.csv", "receptive_field.png", "receptive_field_maps.png"):
        assert (tmp_path / name).stat().st_size > 0
    data = json.loads((tmp_path / "receptive_field.json").read_text())
    result = data["kinds"]["C2sp"]
    assert "resnet_cifar" in result["description"]
    assert len(result["layers"]) == 3 and np.asarray(result["gradient_offset_mean"]).shape == (3, 2)


@pytest.mark.slow
def test_cli_shift_of_a_classify_checkpoint(tmp_path):
    from sympad.train.checkpoint import Checkpointer
    from sympad.train.config import write_config

    workdir = tmp_path / "run"
    config = resnet_config.get_config("kernel=C2sp,runlocal")  # depth 8, width 8
    write_config(config, workdir)
    model = classify_state.create_model(config)
    tx = classify_state.create_optimizer(config, total_steps=2, steps_per_epoch=1)
    state = classify_state.create_train_state(model, tx, seed=0, image_size=16)
    with Checkpointer(workdir / "checkpoints") as checkpointer:
        checkpointer.save(3, state)
    payload = main(["shift", f"--out={tmp_path / 'out'}", f"--checkpoint={workdir}", "--data=synthetic",
                    "--image_size=16", "--num_images=4", "--batch_size=4"])
    assert list(payload["kinds"]) == ["C2sp"]
    assert "step 3" in payload["model"]
    assert np.asarray(payload["kinds"]["C2sp"]["stage_offsets_mean"]).shape == (3, 2)


def test_cli_rejects_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        main(["q-curves", f"--out={tmp_path}", "--depth=9"])
    with pytest.raises(SystemExit):
        main(["shift", f"--out={tmp_path}", "--kinds=C5x"])


@pytest.mark.integration
def test_module_entry_point_help():
    result = subprocess.run(
        [sys.executable, "-m", "paper.analysis", "--help"], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert result.returncode == 0
    for command in ("q-curves", "shift", "receptive-field"):
        assert command in result.stdout
