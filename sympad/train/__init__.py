"""The shared training runtime (``pip install 'sympad[train]'``): used by both suites, knows no suite.

* ``config``: config files, ``--config.a.b=value`` overrides, validation, the ``main()`` runner.
* ``data``: datasets (TFDS, image folders, digits, synthetic), on-device batches, host loading.
* ``mesh``: multi-host start-up, the data mesh, replicated state, sharded batches.
* ``checkpoint``: orbax checkpoints with a manifest, exact restore, clear errors.
* ``metrics``: JSON lines and TensorBoard events, image grids, the NaN/Inf guard.
* ``progress``: progress bars and periodic lines.
* ``loop``: the one training loop both suites run (restore-or-init, step loop, hooks, checkpoints).
"""

import importlib.util as _importlib_util

# Checked here, before any submodule import fails on one of them with a bare
# ModuleNotFoundError that does not say which install brings them. Module -> PyPI name.
# tensorboardX is in the extra but optional at run time (sympad.train.metrics.MetricWriter).
_TRAIN_EXTRA = {
    "absl": "absl-py",
    "ml_collections": "ml-collections",
    "orbax.checkpoint": "orbax-checkpoint",
    "tqdm": "tqdm",
    "PIL": "pillow",
}


def _missing(modules: dict[str, str]) -> list[str]:
    missing = []
    for module, distribution in modules.items():
        try:
            found = _importlib_util.find_spec(module) is not None
        except ImportError:  # the parent package of a dotted name is absent
            found = False
        if not found:
            missing.append(distribution)
    return missing


if _missing(_TRAIN_EXTRA):
    raise ImportError(
        "sympad.train (the training runtime) needs the 'train' extra: pip install 'sympad[train]' "
        "(from a checkout: pip install -e '.[train]'); missing: " + ", ".join(_missing(_TRAIN_EXTRA))
    )
