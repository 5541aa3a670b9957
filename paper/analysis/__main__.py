"""Command line of :mod:`paper.measures`: the paper's Figures 2 and 3 as commands.

Usage::

  python -m paper.analysis q-curves --out=runs/q --num_images=1000 --inits=10
  python -m paper.analysis shift --out=runs/shift --kinds=C2,C2sp
  python -m paper.analysis shift --out=runs/shift_trained --model=classify --checkpoint=WORKDIR
  python -m paper.analysis receptive-field --out=runs/rf --data=synthetic --image_size=96

Commands:

* ``q-curves`` (Fig. 3): layerwise Q = mean |F| of every conv output of the
  untrained plain ResNet-56 (:func:`paper.measures.plain_resnet`: shortcuts
  and batch norm removed, He init), averaged over ``--inits`` random
  initializations. Writes ``q_curves.{png,csv,json}`` and
  ``q_last_layer_maps.png`` (mean |F| of the last conv, Fig. 3's colormaps).
* ``shift`` (Fig. 2, made quantitative): per layer and per stage, the centroid
  offset in input pixels of the mean post-ReLU map over the images. Untrained
  plain stacks (default) or ``--model=classify`` (the classification suite's
  pre-activation CIFAR ResNet, whose post-ReLU maps are ``relu(BN(.))``),
  optionally restored from a training run with ``--checkpoint=WORKDIR``.
  Writes ``shift.{json,csv}``, ``shift_maps.png`` (rows: kinds, columns:
  stages, like Fig. 2) and ``shift_per_layer.png``.
* ``receptive-field``: per layer, the centroid offset and RMS extent of the
  gradient receptive field of the centre unit, and the centroid offset of the
  linearized impulse response. Writes ``receptive_field.{json,csv,png}`` and
  ``receptive_field_maps.png``.

Data (``--data``): ``auto`` (default) is the CIFAR-10 test folder, extracted
from the shared ``cifar10-test.tar.gz`` (``$SYMPAD_SHARED_DATA`` or
``../shared/data``) into ``--cache_dir``; a ``.tar.gz`` path is extracted the same way; anything else is
a dataset name of :func:`sympad.train.data.load` (``cifar10``, ``folder:PATH``,
``digits``, ``synthetic``, ...). ``--num_images`` images are drawn at random
(seeded) from the split and scaled to [-1, 1].
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from paper.analysis.commands import RUNNERS, Settings
from paper.analysis.networks import MODELS
from paper.measures import DOWNSAMPLE_MODES
from sympad.kinds import KINDS, parse_kind
from sympad.train.errors import ArgumentParser, run_cli

__all__ = ["main", "parse_args"]

COMMANDS = tuple(RUNNERS)


def _kinds(value: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in value.split(",") if k.strip())
    if not kinds:
        raise argparse.ArgumentTypeError("--kinds must name at least one kind, e.g. C2,C2sp")
    for k in kinds:
        try:
            parse_kind(k)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return kinds


def _ints(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {value!r}") from None


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {value!r}")
    return n


def _parser() -> argparse.ArgumentParser:
    # Usage mistakes as one error line, like every other user error (sympad.train.errors).
    parser = ArgumentParser(prog="python -m paper.analysis", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")

    def common(p: argparse.ArgumentParser, *, inits: int, num_images: int) -> None:
        p.add_argument("--out", type=Path, required=True, help="output directory (created)")
        p.add_argument("--kinds", type=_kinds, default=KINDS, help="comma-separated kernel kinds")
        p.add_argument("--inits", type=_positive, default=inits, help="random initializations per kind")
        p.add_argument("--seed", type=int, default=0, help="seed of the initializations and the image draw")
        p.add_argument("--data", default="auto",
                       help="'auto' (CIFAR-10 test folder), a .tar.gz, or a sympad.train.data name")
        p.add_argument("--split", default="test", choices=("train", "test"))
        p.add_argument("--num_images", type=_positive, default=num_images, help="images drawn from the split")
        p.add_argument("--image_size", type=_positive, default=None, help="resize images (default: native)")
        p.add_argument(
            "--cache_dir", type=Path, default=None,
            help="where archives are extracted and decoded (default: sympad.train.data.default_cache_dir())",
        )
        p.add_argument("--batch_size", type=_positive, default=250)
        p.add_argument("--depth", type=int, default=56, help="6n + 2")
        p.add_argument("--widths", type=_ints, default=(16, 32, 64), help="plain stack: channels per stage")
        p.add_argument(
            "--downsample",
            choices=DOWNSAMPLE_MODES,
            default=None,
            help="plain stack default 'stride'; classify model default its own ('auto')",
        )

    q = sub.add_parser("q-curves", help="Fig. 3: layerwise Q in untrained plain ResNets")
    common(q, inits=10, num_images=1000)

    s = sub.add_parser("shift", help="Fig. 2: centroid drift of mean post-ReLU maps")
    common(s, inits=3, num_images=1000)

    r = sub.add_parser("receptive-field", help="per-layer gradient receptive field and impulse response")
    common(r, inits=2, num_images=4)
    r.add_argument("--linear", action="store_true", help="plain stack without ReLUs (pure geometry)")
    r.add_argument("--layers", default="all",
                   help="'all', 'stages' (last layer of each stage) or comma-separated indices")

    for p in (s, r):
        p.add_argument("--model", choices=MODELS, default="plain")
        p.add_argument(
            "--checkpoint",
            type=Path,
            default=None,
            help="classify training workdir: restore its latest checkpoint "
            "(implies --model=classify; kind from its config)",
        )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parses and checks a command line (without the program name)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.depth < 8 or (args.depth - 2) % 6:
        parser.error(f"--depth must be 6n + 2 with n >= 1, got {args.depth}")
    if len(args.widths) != 3 and getattr(args, "model", "plain") == "plain":
        # plain_resnet takes any number of stages, but depth 6n + 2 means three.
        parser.error(f"--widths needs three stages for a depth 6n + 2 network, got {args.widths}")
    if getattr(args, "checkpoint", None) is not None:
        args.model = "classify"
    if args.command == "receptive-field" and args.linear and args.model != "plain":
        parser.error("--linear applies to the plain stack only")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs one command; ``argv`` excludes the program name (default ``sys.argv[1:]``).

    Returns:
      The payload written to the command's JSON file.
    """
    args = parse_args(argv)
    cmd = ["python", "-m", "paper.analysis", *(sys.argv[1:] if argv is None else argv)]
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()}
    invocation = {"command": " ".join(str(c) for c in cmd), "config": config}
    settings = Settings(**{k: v for k, v in vars(args).items() if k != "command"})
    payload = RUNNERS[args.command](settings, invocation=invocation)
    print(f"wrote {args.out} ({payload['seconds']:.1f} s)")
    return payload


if __name__ == "__main__":
    run_cli(main)  # a user error (bad value, missing file): one error line, status 2
