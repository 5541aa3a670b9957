"""Converts FID Inception weights (.pth or TorchScript .pt) to .npz or .safetensors at a path you choose.

    python -m gan.metrics.convert --pth=pt_inception-2015-12-05-6726825d.pth --out=inception_fid.npz
    # float16, 37 MB, for a capped carry:
    python -m gan.metrics.convert --pth=fid_inception.npz --out=fid_inception_f16.npz --half

Most users want ``python -m gan.metrics.fetch`` instead, which converts into the cache that
evaluation finds by itself. Torch files are read without torch by a restricted unpickler
(``gan.metrics.torch_archive``: tensors only, no arbitrary code). The output
keeps pytorch-fid's parameter names and layouts; the flax mapping happens at load time, in one
place (``gan.metrics.inception_formats.variables_from_state_dict``). The output records the sha256 of the
source file; reports and reference-statistics caches name the weights by the content digest
``gan.metrics.inception_formats.weights_digest``, computed when they are loaded.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gan.metrics.inception_formats import (
    HALF_FORM,
    WEIGHTS_HELP,
    load_state_dict,
    pack_half,
    variables_from_state_dict,
    weights_digest,
    write_safetensors,
)

__all__ = ["convert", "main"]


def convert(pth: str | Path, out: str | Path, *, half: bool = False) -> dict[str, str]:
    """Writes ``out`` (.npz or .safetensors) from the weights at ``pth`` (any readable format).
    ``half``: an .npz in ``gan.metrics.inception_formats.HALF_FORM`` (float16-rounded values; its
    metadata keeps the float32 weights' digest as ``float32_weights_sha256``). Returns the
    metadata written."""
    out = Path(out)
    if out.suffix not in (".npz", ".safetensors") or (half and out.suffix != ".npz"):
        raise ValueError(f"out: must end in .npz{'' if half else ' or .safetensors'}, got {out.name!r}")
    state, meta = load_state_dict(pth)
    variables_from_state_dict(state)  # fail now, not at evaluation time, if it is not the FID Inception
    state = {k: np.asarray(v) for k, v in state.items() if not k.endswith("num_batches_tracked")}
    meta = {**{k: v for k, v in meta.items() if k not in ("form", "shapes")},
            "format": "pytorch-fid state dict (torch names and layouts)"}
    out.parent.mkdir(parents=True, exist_ok=True)
    if half:
        meta.update(form=HALF_FORM, shapes={k: list(v.shape) for k, v in state.items()
                                            if np.issubdtype(v.dtype, np.floating)},
                    float32_weights_sha256=meta.get("weights_sha256") or weights_digest(state))
        meta.pop("weights_sha256", None)  # the loader computes the half form's own digest
        np.savez(out, __metadata__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **pack_half(state))
    elif out.suffix == ".npz":
        np.savez(out, __metadata__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **state)
    else:
        write_safetensors(out, state, metadata=meta)
    return meta


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=WEIGHTS_HELP)
    parser.add_argument("--pth", required=True,
                        help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth, the TorchScript default_1.pt, "
                             "or an .npz/.safetensors written by this project")
    parser.add_argument("--out", required=True, help="output .npz or .safetensors")
    parser.add_argument("--half", action="store_true",
                        help=f"write the compact .npz ({HALF_FORM}; float16-rounded values, 37 MB)")
    args = parser.parse_args(argv)
    meta = convert(args.pth, args.out, half=args.half)
    print(f"wrote {args.out} (source sha256 {meta.get('sha256', '?')})")


if __name__ == "__main__":
    main()
