"""The flax FID Inception port against pytorch-fid itself (random weights; no download ever).

``test_matches_committed_pytorch_fid_outputs`` (full suite) needs only NumPy/JAX: it compares
the port with pytorch-fid's outputs committed in ``tests/gan/data/pytorch_fid_reference.npz``
(``python -m tests.gan.make_fid_reference`` regenerates them, reference extra). The live
equivalence tests need the reference packages (``pip install -e '.[reference]'``) and skip with
the reason otherwise.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gan.metrics import inception as inc
from gan.metrics import inception_formats as fmt
from gan.metrics import scores
from tests.gan import fid_reference

HAVE_TORCH = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("torchvision") is not None
HAVE_PYTORCH_FID = HAVE_TORCH and importlib.util.find_spec("pytorch_fid") is not None
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="reference package torch/torchvision not installed "
                                 "(optional: pip install torch==2.14.1 torchvision==0.29.1)")
needs_pytorch_fid = pytest.mark.skipif(
    not HAVE_PYTORCH_FID,
    reason="reference packages torch/torchvision/pytorch-fid not installed "
    "(optional: pip install torch==2.14.1 torchvision==0.29.1 pytorch-fid)",
)


def _torch_bilinear_loop(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Literal per-pixel transcription of torch's bilinear rule (align_corners=False), (H, W) input."""
    in_h, in_w = x.shape
    y = np.zeros((out_h, out_w))

    def src(i, n_in, n_out):
        s = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(np.floor(s)), n_in - 1)
        return i0, min(i0 + 1, n_in - 1), s - i0

    for i in range(out_h):
        h0, h1, a = src(i, in_h, out_h)
        for j in range(out_w):
            w0, w1, b = src(j, in_w, out_w)
            y[i, j] = ((1 - a) * ((1 - b) * x[h0, w0] + b * x[h0, w1])
                       + a * ((1 - b) * x[h1, w0] + b * x[h1, w1]))
    return y


@pytest.mark.parametrize("in_size,out_size", [((8, 5), (19, 13)), ((13, 9), (6, 4)), ((7, 7), (7, 7))])
def test_resize_matches_torch_rule(in_size, out_size):
    x = np.random.default_rng(0).random((2, *in_size, 3), np.float32)
    got = np.asarray(jax.jit(lambda v: inc.resize_bilinear(v, out_size))(x))
    for b in range(2):
        for c in range(3):
            want = _torch_bilinear_loop(x[b, :, :, c].astype(np.float64), *out_size)
            np.testing.assert_allclose(got[b, :, :, c], want, rtol=1e-5, atol=1e-6)


def test_upsampling_32_to_299_agrees_with_jax_image_resize():
    # For upsampling, antialiasing is a no-op, so jax's half-pixel bilinear must agree with torch's rule.
    x = np.random.default_rng(1).random((2, 32, 32, 3), np.float32)
    ours = inc.resize_bilinear(jnp.asarray(x), (299, 299))
    theirs = jax.image.resize(x, (2, 299, 299, 3), "bilinear", precision=jax.lax.Precision.HIGHEST)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=1e-5)


@needs_torch
@pytest.mark.parametrize("in_size,out_size", [(32, 299), (64, 299), (512, 299)])
def test_resize_matches_torch_interpolate(in_size, out_size):
    import torch
    import torch.nn.functional as F

    x = np.random.default_rng(2).random((1, in_size, in_size, 3), np.float32)
    want = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(out_size, out_size),
                         mode="bilinear", align_corners=False).permute(0, 2, 3, 1).numpy()
    got = np.asarray(inc.resize_bilinear(jnp.asarray(x), (out_size, out_size)))
    np.testing.assert_allclose(got, want, atol=5e-7)


def test_missing_weights_error_says_where_and_how(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        fmt.load_inception_weights(tmp_path / "nope.pth")
    msg = str(e.value)
    assert "github.com/mseitzer/pytorch-fid/releases" in msg and fmt.WEIGHTS_FILENAME in msg
    assert "--inception_weights" in msg and "gan.metrics.fetch" in msg


@functools.lru_cache(maxsize=1)
def _torch_shapes() -> dict[str, tuple[int, ...]]:
    """pytorch-fid's state-dict names and shapes of the FID Inception, built from the flax shapes."""
    shapes = jax.eval_shape(lambda: inc.FIDInceptionV3().init(jax.random.PRNGKey(0), jnp.zeros((1, 299, 299, 3))))
    torch_shapes = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(shapes["params"]):
        keys = [p.key for p in path]
        name, leafname = ".".join(keys[:-1]), keys[-1]
        if name == "fc":  # torch (out, in), flax (in, out)
            torch_shapes[f"fc.{'weight' if leafname == 'kernel' else 'bias'}"] = leaf.shape[::-1]
        elif leafname == "kernel":  # torch OIHW, flax HWIO; the BatchNorm folded into it has four (O,) leaves
            kh, kw, i, o = leaf.shape
            torch_shapes[f"{name}.conv.weight"] = (o, i, kh, kw)
            torch_shapes.update({f"{name}.bn.{k}": (o,) for k in ("weight", "bias", "running_mean", "running_var")})
    return torch_shapes


@functools.lru_cache(maxsize=1)
def _random_state_dict(seed: int = fid_reference.WEIGHTS_SEED) -> dict[str, np.ndarray]:
    """A torch-named state dict with the FID Inception's shapes and the reference file's random weights."""
    return fid_reference.random_state_dict(_torch_shapes(), seed)


def test_converted_files_load_identically(tmp_path):
    from gan.metrics import convert

    state = _random_state_dict()
    direct = fmt.variables_from_state_dict(state)
    # The converter's writers (its torch reader is exercised by the equivalence test).
    npz = tmp_path / "w.npz"
    np.savez(npz, __metadata__=np.frombuffer(json.dumps({"sha256": "abc"}).encode(), np.uint8), **state)
    variables, meta = fmt.load_inception_weights(npz)
    assert meta["sha256"] == "abc"
    jax.tree.map(np.testing.assert_array_equal, variables, direct)
    # Layout: torch OIHW → flax HWIO with the BatchNorm folded in, fc (out, in) → (in, out).
    layer = "Mixed_6b.branch7x7_2"
    kernel, bias = fmt.fold_batch_norm(state[f"{layer}.conv.weight"], state[f"{layer}.bn.weight"],
                                       state[f"{layer}.bn.bias"], state[f"{layer}.bn.running_mean"],
                                       state[f"{layer}.bn.running_var"])
    assert kernel.shape == state[f"{layer}.conv.weight"].transpose(2, 3, 1, 0).shape
    np.testing.assert_array_equal(direct["params"]["Mixed_6b"]["branch7x7_2"]["kernel"], kernel)
    np.testing.assert_array_equal(direct["params"]["Mixed_6b"]["branch7x7_2"]["bias"], bias)
    np.testing.assert_array_equal(direct["params"]["fc"]["kernel"], state["fc.weight"].T)
    with pytest.raises(ValueError, match="out"):
        convert.convert(npz, tmp_path / "w.bin")


def test_safetensors_round_trip_and_layout(tmp_path):
    rng = np.random.default_rng(3)
    tensors = {"b.weight": rng.normal(size=(3, 2, 5)).astype(np.float32), "a": np.arange(7, dtype=np.int64),
               "c": rng.normal(size=(4,))}
    path = tmp_path / "t.safetensors"
    fmt.write_safetensors(path, tensors, metadata={"sha256": "abc"})
    got, meta = fmt.read_safetensors(path)
    assert meta == {"sha256": "abc"} and set(got) == set(tensors)
    for k, v in tensors.items():
        assert got[k].dtype == v.dtype
        np.testing.assert_array_equal(got[k], v)
    # The format (safetensors spec): u64 little-endian header size, JSON header, 8-byte aligned data.
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    start, end = header["b.weight"]["data_offsets"]
    assert header["b.weight"] == {"dtype": "F32", "shape": [3, 2, 5], "data_offsets": [start, end]}
    assert n % 8 == 0 and end - start == 30 * 4
    np.testing.assert_array_equal(np.frombuffer(raw[8 + n + start : 8 + n + end], "<f4").reshape(3, 2, 5),
                                  tensors["b.weight"])


def test_wrong_state_dict_is_rejected():
    state = dict(_random_state_dict())
    del state["Mixed_7c.branch_pool.conv.weight"]
    with pytest.raises(ValueError, match="missing"):
        fmt.variables_from_state_dict(state)


def test_fold_batch_norm_matches_conv_then_batch_norm():
    """The folded conv against conv (no bias) then inference BatchNorm, written out in float64 NumPy."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 6, 5, 3))
    weight = rng.standard_normal((4, 3, 3, 2)).astype(np.float32)  # torch (O, I, kh, kw)
    gamma, var = (0.5 + rng.random(4)).astype(np.float32), (0.5 + rng.random(4)).astype(np.float32)
    beta, mean = (0.1 * rng.standard_normal((2, 4))).astype(np.float32)
    conv = np.zeros((2, 4, 4, 4))  # VALID: (6 - 3 + 1, 5 - 2 + 1)
    for i in range(4):
        for j in range(4):
            conv[:, i, j, :] = np.einsum("bhwc,ochw->bo", x[:, i : i + 3, j : j + 2, :], weight.astype(np.float64))
    want = (conv - mean) / np.sqrt(var.astype(np.float64) + fmt.BN_EPSILON) * gamma + beta
    kernel, bias = fmt.fold_batch_norm(weight, gamma, beta, mean, var)
    got = jax.lax.conv_general_dilated(jnp.asarray(x, jnp.float32), kernel, (1, 1), "VALID",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                       precision=jax.lax.Precision.HIGHEST) + bias
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@needs_pytorch_fid
def test_matches_pytorch_fid(tmp_path, monkeypatch):
    """pytorch-fid's own InceptionV3 (random weights) vs the port: pool features and logits to 1e-4."""
    import pytorch_fid.inception as pfi
    import torch
    import torchvision

    from gan.metrics import convert

    # Random, well-scaled weights with torchvision's parameter names (the FID blocks subclass
    # torchvision's, so names and shapes are the same); BN statistics random too so they are tested.
    gen = torch.Generator().manual_seed(0)
    source = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    with torch.no_grad():
        for name, t in source.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("conv.weight"):
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            elif name == "fc.weight":
                t.copy_(torch.randn(t.shape, generator=gen) / t.shape[1] ** 0.5)
            elif name.endswith("running_var") or name.endswith("bn.weight"):
                t.copy_(0.5 + torch.rand(t.shape, generator=gen))
            else:  # bn.bias, running_mean, fc.bias
                t.copy_(0.1 * torch.randn(t.shape, generator=gen))
    state = source.state_dict()

    # pytorch-fid builds its FID network and loads weights through this function; hand it ours
    # instead of letting it reach the network.
    monkeypatch.setattr(pfi, "load_state_dict_from_url", lambda *a, **k: state)
    ref_pool_net = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    ref_full_net = pfi.fid_inception_v3().eval()  # torchvision forward with the FID blocks: logits

    pth = tmp_path / "random_fid_inception.pth"
    torch.save(state, pth)
    npz = tmp_path / "random_fid_inception.npz"
    convert.main([f"--pth={pth}", f"--out={npz}"])
    variables, meta = fmt.load_inception_weights(npz)
    assert len(meta["sha256"]) == 64
    st = tmp_path / "random_fid_inception.safetensors"
    convert.main([f"--pth={pth}", f"--out={st}"])
    st_variables, st_meta = fmt.load_inception_weights(st)
    assert st_meta["sha256"] == meta["sha256"]
    jax.tree.map(np.testing.assert_array_equal, st_variables, variables)

    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
        ref_pool = ref_pool_net(x)[0].squeeze(-1).squeeze(-1).numpy()
        resized = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        ref_logits = ref_full_net(2 * resized - 1).numpy()
        ref_unbiased = ref_pool @ state["fc.weight"].numpy().T

    out = jax.tree.map(np.asarray, inc.inception_apply_fn(variables)(jnp.asarray(images)))
    assert out["pool"].shape == (2, 2048) and out["logits"].shape == (2, 1008)
    for name, ref in [("pool", ref_pool), ("logits", ref_logits), ("logits_unbiased", ref_unbiased)]:
        rel = float(np.max(np.abs(out[name] - ref)) / np.max(np.abs(ref)))
        print(f"pytorch-fid equivalence: {name} max |port - ref| / max |ref| = {rel:.2e} "
              f"(max |ref| {np.max(np.abs(ref)):.3g})")
        np.testing.assert_allclose(out[name], ref, rtol=1e-4, atol=1e-4 * np.max(np.abs(ref)))


@pytest.mark.slow
def test_matches_committed_pytorch_fid_outputs():
    """The port against pytorch-fid's own outputs, committed (tests/gan/make_fid_reference.py): no torch here.

    Same random weights, same images: pool3 and the 1008 logits at 32 and 64 px to 1e-4 of their
    scale, and the FID between two 32 px sets as pytorch-fid's calculate_frechet_distance gave it.
    """
    reference = np.load(Path(__file__).resolve().parent / "data" / fid_reference.REFERENCE_FILE)
    state = _random_state_dict()
    assert fid_reference.digest(state) == str(reference["weights_sha256"]), "not the weights pytorch-fid ran"
    images = fid_reference.reference_images()
    for name, batch in images.items():
        np.testing.assert_array_equal(batch, reference[name], err_msg=name)

    # One compiled network for every image: each size is resized to 299 px first, as the port does.
    model = inc.FIDInceptionV3(num_classes=inc.NUM_CLASSES)
    out = jax.jit(model.apply)(fmt.variables_from_state_dict(state),
                               jnp.concatenate([inc.preprocess(jnp.asarray(b)) for b in images.values()]))
    starts = np.cumsum([0, *(len(b) for b in images.values())])
    for (name, _), lo, hi in zip(images.items(), starts[:-1], starts[1:]):
        key = name.removeprefix("images_")
        for output in ("pool", "logits"):
            got, want = np.asarray(out[output][lo:hi], np.float64), reference[f"{output}_{key}"]
            scale = np.max(np.abs(want))
            print(f"pytorch-fid reference: {output} {key}: max |port - ref| / max |ref| = "
                  f"{np.max(np.abs(got - want)) / scale:.2e}")
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale, err_msg=f"{output}_{key}")
    pool_a, pool_b = (np.asarray(out["pool"][lo:hi], np.float64) for lo, hi in zip(starts[:2], starts[1:3]))
    want = float(reference["fid_a_b"])
    fid = scores.frechet_distance(*scores.feature_statistics(pool_a), *scores.feature_statistics(pool_b))
    assert fid == pytest.approx(want, rel=1e-5)  # 1.2e-7 apart (measured)
    # That FID (~23,112) is nearly all |mu_a - mu_b|^2; the matrix-square-root term 2 tr sqrt(S_a S_b)
    # (~13) is below 1e-3 of it, so it is checked on its own. FID = |mu_a - mu_b|^2 + tr S_a + tr S_b
    # - term gives pytorch-fid's term from its FID and its own features (the rest is sums), and the
    # port's from its FID: 2e-7 apart, and 5e-9 where frechet_distance gets pytorch-fid's features.
    def sqrt_term(a: np.ndarray, b: np.ndarray, fid: float) -> float:
        (mu_a, s_a), (mu_b, s_b) = scores.feature_statistics(a), scores.feature_statistics(b)
        return float((mu_a - mu_b) @ (mu_a - mu_b) + np.trace(s_a) + np.trace(s_b) - fid)

    ref_a, ref_b = reference["pool_a"], reference["pool_b"]
    want_term = sqrt_term(ref_a, ref_b, want)
    assert want_term > 10
    assert sqrt_term(pool_a, pool_b, fid) == pytest.approx(want_term, rel=1e-4)
    ref_fid = scores.frechet_distance(*scores.feature_statistics(ref_a), *scores.feature_statistics(ref_b))
    assert sqrt_term(ref_a, ref_b, ref_fid) == pytest.approx(want_term, rel=1e-4)


@needs_torch
def test_pth_name_hash_is_checked(tmp_path):
    import torch

    path = tmp_path / "pt_inception-2015-12-05-deadbeef.pth"
    torch.save({"fc.bias": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="sha256"):
        fmt.load_state_dict(path)


def test_half_form_loads_the_float16_rounded_weights_and_says_so(tmp_path):
    # The compact form the GPU campaign carries (37.6 MB for the real weights instead of 87.4 MB).
    from gan.metrics import convert
    from gan.metrics.features import get_feature_network

    state = _random_state_dict()
    src = tmp_path / "w.npz"
    np.savez(src, __metadata__=np.frombuffer(json.dumps({"sha256": "abc"}).encode(), np.uint8), **state)
    meta = convert.convert(src, tmp_path / "w16.npz", half=True)
    assert meta["form"] == fmt.HALF_FORM and meta["float32_weights_sha256"] == fmt.weights_digest(state)
    assert (tmp_path / "w16.npz").stat().st_size < 0.55 * src.stat().st_size
    variables, loaded = fmt.load_inception_weights(tmp_path / "w16.npz")
    rounded = {k: v.astype(np.float16).astype(np.float32) for k, v in state.items()}
    jax.tree.map(np.testing.assert_array_equal, variables, fmt.variables_from_state_dict(rounded))
    assert loaded["weights_sha256"] == fmt.weights_digest(rounded) != fmt.weights_digest(state)
    identity = get_feature_network("inception", inception_weights=tmp_path / "w16.npz").identity
    assert identity["form"] == fmt.HALF_FORM and identity["float32_sha256"] == fmt.weights_digest(state)
    assert get_feature_network("inception", inception_weights=src).identity["form"] == "float32"
    with pytest.raises(ValueError, match="npz"):
        convert.convert(src, tmp_path / "w16.safetensors", half=True)
