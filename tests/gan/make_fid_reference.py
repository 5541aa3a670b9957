"""Regenerates tests/gan/data/pytorch_fid_reference.npz with pytorch-fid itself.

    pip install -e '.[reference]'            # torch, torchvision, pytorch-fid
    python -m tests.gan.make_fid_reference   # from the repository root

pytorch-fid's own network (``InceptionV3`` for pool3, ``fid_inception_v3`` for the 1008 logits)
gets the random weights of :mod:`tests.gan.fid_reference` in place of the downloaded ones, and
runs on that module's images at 32 and 64 px; its ``calculate_frechet_distance`` gives the FID
between the two 32 px sets. ``test_inception_port.py`` compares the flax port with these
numbers without torch, so the equivalence is checked wherever the test suite runs. Nothing is
downloaded. Needs only the reference extra (no jax).
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytorch_fid.inception as pfi
import torch
from pytorch_fid.fid_score import calculate_frechet_distance

from tests.gan import fid_reference

OUT = Path(__file__).resolve().parent / "data" / fid_reference.REFERENCE_FILE


def main() -> None:
    torch.set_grad_enabled(False)
    # fid_inception_v3 builds the network and loads its weights through this name; hand it the
    # random ones instead of letting it reach the network.
    template = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None).state_dict()
    shapes = {k: tuple(v.shape) for k, v in template.items() if not k.endswith("num_batches_tracked")}
    state = fid_reference.random_state_dict(shapes)
    torch_state = {k: torch.from_numpy(v) for k, v in state.items()}
    pfi.load_state_dict_from_url = lambda *args, **kwargs: torch_state
    pool_net = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    logits_net = pfi.fid_inception_v3().eval()  # torchvision's forward with the FID blocks: logits

    def outputs(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0  # what pytorch-fid's loader gives
        pool = pool_net(x)[0].squeeze(-1).squeeze(-1).double().numpy()
        # InceptionV3's own preprocessing (resize_input, normalize_input) before the full network.
        resized = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        logits = logits_net(2 * resized - 1).double().numpy()
        return pool, logits

    images = fid_reference.reference_images()
    arrays: dict[str, np.ndarray] = dict(images)
    for name, batch in images.items():
        suffix = name.removeprefix("images_")
        arrays[f"pool_{suffix}"], arrays[f"logits_{suffix}"] = outputs(batch)
    stats = [(p.mean(axis=0), np.cov(p, rowvar=False)) for p in (arrays["pool_a"], arrays["pool_b"])]
    arrays["fid_a_b"] = np.float64(calculate_frechet_distance(*stats[0], *stats[1]))
    versions = {d: metadata.version(d) for d in ("torch", "torchvision", "pytorch-fid", "numpy", "scipy")}
    arrays["provenance"] = np.array(
        f"pytorch-fid reference outputs, random weights (seed {fid_reference.WEIGHTS_SEED}), made by "
        f"tests/gan/make_fid_reference.py with " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    arrays["weights_sha256"] = np.array(fid_reference.digest(state))
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT.relative_to(Path.cwd()) if OUT.is_relative_to(Path.cwd()) else OUT.name}: "
          f"FID(a, b) = {float(arrays['fid_a_b']):.6g}; {arrays['provenance']}")


if __name__ == "__main__":
    sys.exit(main())
