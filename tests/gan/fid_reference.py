"""What tests/gan/data/pytorch_fid_reference.npz was computed from: random FID-Inception weights and images.

NumPy only (no jax, no torch), so the script that runs pytorch-fid
(``tests/gan/make_fid_reference.py``, reference extra) and the test that runs the flax port
without torch (``tests/gan/test_inception_port.py``) build bit-identical inputs from the same
seeds. The test checks the weights' digest stored in the file before it compares outputs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np

REFERENCE_FILE = "pytorch_fid_reference.npz"
WEIGHTS_SEED = 0
IMAGES_SEED = 2024
#: Images per FID set at 32 px, and images at 64 px (pool3 and logits only).
SET_SIZE_32, NUM_64 = 5, 3


def random_state_dict(shapes: Mapping[str, tuple[int, ...]], seed: int = WEIGHTS_SEED) -> dict[str, np.ndarray]:
    """Random, well-scaled weights for a pytorch-fid-named FID Inception state dict.

    He-scaled conv kernels keep the activations finite through the ~95 layers; BatchNorm's
    scale, bias and running statistics are random too, so the port's BN folding is tested.
    Leaves are drawn in sorted-name order, so the result depends on the names and shapes only.
    """
    rng = np.random.default_rng(seed)
    state = {}
    for name in sorted(shapes):
        shape = tuple(shapes[name])
        if name.endswith("conv.weight"):
            value = rng.standard_normal(shape) * (2.0 / np.prod(shape[1:])) ** 0.5
        elif name == "fc.weight":
            value = rng.standard_normal(shape) / shape[1] ** 0.5
        elif name.endswith(("bn.weight", "running_var")):
            value = 0.5 + rng.random(shape)
        else:  # bn.bias, bn.running_mean, fc.bias
            value = 0.1 * rng.standard_normal(shape)
        state[name] = value.astype(np.float32)
    return state


def digest(state: Mapping[str, np.ndarray]) -> str:
    """sha256 over the sorted names, shapes and float32 bytes of a state dict."""
    h = hashlib.sha256()
    for name in sorted(state):
        value = np.ascontiguousarray(state[name], np.float32)
        h.update(f"{name}:{value.shape};".encode())
        h.update(value.tobytes())
    return h.hexdigest()


def reference_images() -> dict[str, np.ndarray]:
    """Two 32 px sets from different distributions (for the FID) and a few 64 px images, uint8 NHWC."""
    rng = np.random.default_rng(IMAGES_SEED)
    return {
        "images_a": rng.integers(0, 256, (SET_SIZE_32, 32, 32, 3), dtype=np.uint8),
        "images_b": rng.integers(64, 192, (SET_SIZE_32, 32, 32, 3), dtype=np.uint8),
        "images_64": rng.integers(0, 256, (NUM_64, 64, 64, 3), dtype=np.uint8),
    }
