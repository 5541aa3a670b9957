"""The shared training runtime (``pip install 'sympad[train]'``): used by both suites, knows no suite.

* ``config``: config files, ``--config.a.b=value`` overrides, validation, the ``main()`` runner.
* ``data``: datasets (TFDS, image folders, digits, synthetic), on-device batches, host loading.
* ``mesh``: multi-host start-up, the data mesh, replicated state, sharded batches.
* ``checkpoint``: orbax checkpoints with a manifest, exact restore, clear errors.
* ``metrics``: JSON lines and TensorBoard events, image grids, the NaN/Inf guard.
* ``progress``: progress bars and periodic lines.
* ``loop``: the one training loop both suites run (restore-or-init, step loop, hooks, checkpoints).
"""
