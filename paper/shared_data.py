"""Where the paper's commands find the project's shared data archives: ``../shared/data`` beside the checkout.

The runtime (``sympad.train.data``) looks for the archives (``cifar10-train.tar.gz``,
``cifar10-test.tar.gz``) only in ``$SYMPAD_SHARED_DATA``: an installed library knows no checkout.
The commands here run from the checkout, so they supply its default, ``../shared/data`` beside the
repository, when the variable is unset (and the device run sets it to the carried copy,
paper/device/run.sh).

Example::

  with use_shared_data():
      root = data.cifar10_folder("test", cache_dir=cache)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["CHECKOUT_SHARED_DATA", "use_shared_data"]

REPO = Path(__file__).resolve().parents[1]
#: ``../shared/data`` beside the checkout: the project's default for ``$SYMPAD_SHARED_DATA``.
CHECKOUT_SHARED_DATA = REPO.parent / "shared" / "data"
# sympad.train.data.SHARED_DATA_ENV, spelled out so this module imports no JAX.
_ENV = "SYMPAD_SHARED_DATA"


@contextlib.contextmanager
def use_shared_data(folder: Path | None = None) -> Iterator[None]:
    """``$SYMPAD_SHARED_DATA`` for the block, restored after.

    ``folder`` when given; else the variable as set; else :data:`CHECKOUT_SHARED_DATA` when it exists
    (unset otherwise, so the library's error names the variable).
    """
    previous = os.environ.get(_ENV)
    chosen = folder if folder is not None else (previous or (CHECKOUT_SHARED_DATA if CHECKOUT_SHARED_DATA.is_dir()
                                                              else None))
    if chosen is not None:
        os.environ[_ENV] = str(chosen)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(_ENV, None)
        else:
            os.environ[_ENV] = previous
