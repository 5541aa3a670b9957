"""The measured part of ``implementation='auto'``: its decision table and the CPU's 16-bit rule.

Apart from :mod:`sympad.ops` because it changes with measurements, not with the
op's meaning: each row and constant points to its figures in BENCHMARKS.md, and
tests/library/test_choice.py pins the table. What overrides it (an explicit
``implementation=``, then :func:`sympad.use_implementation`) is in :mod:`sympad.ops`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

#: N*H*W*C*F from which a C2sp conv with few channels counts as large on a GPU:
#: large enough that the FLOPs ``embed`` spends (C3's) cost more than
#: ``pad_select``'s padded copy. Set between the largest conv measured where
#: ``embed`` won and the smallest where ``pad_select`` won (BENCHMARKS.md,
#: "The automatic choice on a GPU"); the exact crossing is not measured.
_GPU_LARGE_CONV = 2**30


def work_dtype(implementation: str, x: jax.Array, kernel: jax.Array) -> Any:
    """float32 where ``'auto'`` computes a 16-bit float conv in float32, else None.

    XLA:CPU has no fast 16-bit elementwise code: building the padded copy in
    bfloat16 cost more than the conv it saves, while XLA:CPU's convs compute
    in float32 anyway. Converting the operands first makes the copy a float32
    one; the output is rounded once, to ``preferred_element_type`` or the
    input dtype (BENCHMARKS.md, "CPU: bfloat16 calls computed in float32").
    Explicit formulations compute in the dtype they are given.
    """
    low = (jnp.bfloat16, jnp.float16)
    if implementation == "auto" and jax.default_backend() == "cpu" and x.dtype == kernel.dtype and x.dtype in low:
        return jnp.float32
    return None


def auto_choice(backend: str, x_shape: Sequence[int], kernel_shape: Sequence[int], feature_group_count: int) -> str:
    """The decision table of ``'auto'``, from static facts only (backend and shapes).

    Every row was measured on the backend it names (BENCHMARKS.md: "The
    automatic choice: the figures behind each row"); what was not measured
    there (1D/3D, grouped convs, other backends) stays on ``pad_select``, the
    plain pad-then-VALID form. The dtype does not enter: on CPU 16-bit calls
    are computed in float32 (``work_dtype``).
    """
    channels = x_shape[-1]
    two_d = len(x_shape) == 4
    depthwise = feature_group_count == channels > 1
    ungrouped = feature_group_count == 1
    small_kernel = max(kernel_shape[:-2]) <= 2  # C2sp; C4sp has 4x4

    if backend == "cpu" and two_d:
        if depthwise:
            # XLA:CPU's depthwise conv is slow; a fused sum of shifted slices
            # runs no conv at all.
            return "depthwise_taps"
        if ungrouped:
            # XLA:CPU's 2D convs are much slower when the conv pads nothing (a
            # VALID conv on a padded copy), so the conv pads one axis itself
            # (*_crop); concat_crop builds the copy from channel runs, without
            # XLA:CPU's slow per-channel select. Exception: a 2x2 kernel on
            # few channels, where pad_concat's VALID conv on the small copy
            # measured at least as fast in the networks.
            return "pad_concat" if small_kernel and channels <= 32 else "concat_crop"
    if backend == "gpu" and two_d and ungrouped and small_kernel:
        # 128+ channels: pad_concat's copy costs as little as plain C2's own
        # padding. Fewer channels: a small conv is not limited by FLOPs (plain
        # C2 itself is no faster than C3 there), so embed runs C3's conv with
        # no padded copy and less memory; a large one is, and pad_select's
        # copy is the cheapest there.
        if channels >= 128:
            return "pad_concat"
        work = np.prod(x_shape[:-1], dtype=np.int64) * channels * kernel_shape[-1]
        return "pad_select" if work >= _GPU_LARGE_CONV else "embed"
    return "pad_select"
