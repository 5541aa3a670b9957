"""What the module systems (:mod:`sympad.linen`, :mod:`sympad.nnx`, :mod:`sympad.equinox`) share.

A private module of the package, the one home of three rules that would
otherwise be written once per framework:

* which module a kind builds (:func:`module_for`, :func:`factory_arguments`);
* which padding sympad's ``Conv`` computes itself, and where it leaves the
  framework's conv to compute exactly what it always did (:func:`own_rule`);
* what converting a model to a kind changes (:func:`converts`,
  :func:`converted_kernel_size`).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from sympad.kinds import PADDINGS, KernelKind, parse_kind

#: The rule the frameworks' own convs implement, as ``padding='SAME'``.
HOST_PADDING = "SAME"

Module = TypeVar("Module")


def module_for(kind: KernelKind, *, host: Module, sympad: Module) -> Module:
    """The module class that pads by ``kind.padding``: the framework's own conv for its
    ``'SAME'``, sympad's ``Conv`` for every other rule (which it takes as its ``padding``)."""
    return host if kind.padding == HOST_PADDING else sympad


def factory_arguments(kind: str, spatial_dims: Any, kwargs: Mapping[str, Any]) -> tuple[KernelKind, tuple[int, ...]]:
    """What every ``conv(kind, ...)`` factory starts from: the parsed kind and its kernel size.

    Raises:
      ValueError: for an unknown kind, a ``spatial_dims`` that is not a positive
        int, or a ``padding`` argument (the kind fixes the padding).
    """
    parsed = parse_kind(kind)
    if isinstance(spatial_dims, bool) or not isinstance(spatial_dims, numbers.Integral) or spatial_dims < 1:
        raise ValueError(f"spatial_dims must be a positive int, got {spatial_dims!r}")
    if "padding" in kwargs:
        raise ValueError(f"conv(kind={kind!r}) fixes the padding ({parsed.padding!r}); pass no padding argument")
    return parsed, (parsed.size,) * int(spatial_dims)


def is_same(padding: Any) -> bool:
    """Whether a conv's ``padding`` is the string ``'SAME'`` (in any case, as lax reads it)."""
    return isinstance(padding, str) and padding.upper() == "SAME"


def own_rule(padding: Any, kernel_size: Sequence[int], kernel_dilation: Any) -> str | None:
    """The padding rule sympad's ``Conv`` computes itself, or None where the framework's conv does.

    ``'SAME'`` is symmetric where the total padding ``dilation * (k - 1)`` is
    odd on some axis (even kernels); elsewhere (odd kernels) symmetric and
    XLA's ``'SAME'`` agree at stride 1, and the framework's conv computes it,
    strides and every argument included. A rule named by its value in
    :data:`sympad.PADDINGS` (``'SYMMETRIC'``, what ``conv('C<k>sp')`` passes)
    is sympad's for every kernel. Any other padding (``'VALID'``, explicit
    pads, ``'CIRCULAR'``, ...) is the framework's.
    """
    if is_same(padding):
        dilation = (1,) * len(kernel_size) if kernel_dilation is None else kernel_dilation
        dilation = (dilation,) * len(kernel_size) if isinstance(dilation, int) else tuple(dilation)
        return "SYMMETRIC" if any(d * (k - 1) % 2 for k, d in zip(kernel_size, dilation)) else None
    if isinstance(padding, str) and padding != HOST_PADDING and padding in PADDINGS.values():
        return padding
    return None


def converts(kind: KernelKind, padding: Any, kernel_size: Sequence[int], *, plain: bool) -> bool:
    """Whether converting a model to ``kind`` changes this conv: its padding is ``'SAME'``, it is
    not pointwise (some extent > 1), it is ``plain`` (no weight mask, zero padding), and the kind
    changes its padding or its kernel."""
    if not (plain and is_same(padding) and any(k > 1 for k in kernel_size)):
        return False
    return kind.padding != HOST_PADDING or converted_kernel_size(kind, kernel_size) != tuple(kernel_size)


def converted_kernel_size(kind: KernelKind, kernel_size: Sequence[int]) -> tuple[int, ...]:
    """The kernel a converted conv gets: every odd extent > 1 becomes ``kind.size``; extents
    of 1 (a pointwise axis) and even extents stay."""
    return tuple(kind.size if k > 1 and k % 2 else int(k) for k in kernel_size)
