"""``benchmarks.fid``: both sides get the same weights; without the reference extra it says what to install.
No assertion here is about speed."""

from __future__ import annotations

import importlib.util

import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import fid
from sympad.train import errors

HAVE_REFERENCE = all(importlib.util.find_spec(m) is not None for m in ("torch", "torchvision", "pytorch_fid"))


@pytest.mark.skipif(HAVE_REFERENCE, reason="the reference extra is installed here")
def test_without_pytorch_fid_it_names_the_install():
    with pytest.raises(errors.ConfigError, match="pytorch-fid"):
        fid.main(["--tiny"])


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_REFERENCE, reason="needs torch, torchvision and pytorch-fid (reference extra)")
def test_pytorch_fid_side_runs_the_given_weights():
    import torch

    from gan.metrics import inception as inc
    from gan.metrics import inception_formats as fmt
    from tests.gan import fid_reference
    from tests.gan.test_inception_port import _random_state_dict

    state = _random_state_dict()
    images = fid_reference.reference_images()["images_a"][:2]
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
        theirs = fid.pytorch_fid_network(fid.torch_weights(state), "cpu")(x)[0].squeeze(-1).squeeze(-1).numpy()
    variables = fmt.variables_from_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")})
    ours = np.asarray(inc.inception_apply_fn(variables)(jnp.asarray(images))["pool"])
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.max(np.abs(theirs)))


@pytest.mark.slow  # extracts the 10k test JPEGs
def test_both_sides_read_the_shared_cifar10_test_jpegs(tmp_path):
    from paper import shared_data

    if shared_data.shared_data_file("cifar10-test.tar.gz") is None:
        pytest.skip("no shared CIFAR-10 archives (../shared/data or $SYMPAD_SHARED_DATA)")
    files = fid._cifar_test_jpegs(tmp_path)
    assert len(files) == 10_000 and {f.suffix for f in files} == {".jpg"}
    assert len({f.parent.name for f in files}) == 10  # the classes' folders
