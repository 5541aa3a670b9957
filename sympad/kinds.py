"""The paper's kernel-kind notation: 'C3', 'C2', 'C2sp', 'C4', 'C4sp', generally 'C<k>[sp]'.

A kind is a kernel size and a padding rule. The rule is a value
(:data:`PADDINGS`) that :func:`sympad.ops.padded_conv` dispatches on and that
the module factories pass on as the module's ``padding``; a new rule is a new
suffix here and a new branch there, and no module changes.
"""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Mapping

__all__ = ["KINDS", "PADDINGS", "KernelKind", "parse_kind"]

#: The kinds the paper compares.
KINDS: tuple[str, ...] = ("C3", "C2", "C2sp", "C4", "C4sp")

#: The padding rules, by the suffix that names them in ``C<k><suffix>``:
#: ``'SAME'`` is XLA's (the extra zero of an even kernel bottom/right; the
#: framework's own conv), ``'SYMMETRIC'`` the paper's symmetric padding.
PADDINGS: Mapping[str, str] = types.MappingProxyType({"": "SAME", "sp": "SYMMETRIC"})

_SUFFIXES = "|".join(re.escape(suffix) for suffix in sorted(PADDINGS, key=len, reverse=True))
_PATTERN = re.compile(rf"^C([1-9][0-9]*)({_SUFFIXES})$")


@dataclasses.dataclass(frozen=True)
class KernelKind:
    """A parsed kind.

    Attributes:
      size: kernel extent per spatial axis (``k`` of ``C<k>``).
      padding: the padding rule, one of the values of :data:`PADDINGS`:
        ``'SAME'`` (XLA's, which puts the extra zero of an even kernel
        bottom/right) or ``'SYMMETRIC'`` (``C<k>sp``).
    """

    size: int
    padding: str

    def __post_init__(self):
        # Caught here, not as an odd shape error in the first conv built from it.
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 1:
            raise ValueError(f"size must be a positive int, got {self.size!r}")
        if self.padding not in PADDINGS.values():
            raise ValueError(f"padding must be one of {tuple(PADDINGS.values())}, got {self.padding!r}")

    @property
    def name(self) -> str:
        """The kind in the paper's notation, e.g. ``'C2sp'``."""
        suffix = next(s for s, rule in PADDINGS.items() if rule == self.padding)
        return f"C{self.size}{suffix}"

    @property
    def symmetric(self) -> bool:
        """``padding == 'SYMMETRIC'``."""
        return self.padding == "SYMMETRIC"


def parse_kind(kind: str) -> KernelKind:
    """Parses ``'C<k>'`` or ``'C<k>sp'``.

    Raises:
      ValueError: if ``kind`` is not a string of that form (case matters); the
        message shows the bad kind and lists the valid form.
    """
    match = _PATTERN.match(kind) if isinstance(kind, str) else None
    if match is None:
        raise ValueError(
            f"unknown kernel kind {kind!r}: expected 'C<k>' (k x k, 'SAME' padding) or "
            f"'C<k>sp' (symmetric padding) with k a positive int, e.g. one of {KINDS}"
        )
    return KernelKind(size=int(match.group(1)), padding=PADDINGS[match.group(2)])
