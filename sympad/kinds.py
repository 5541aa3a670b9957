"""The paper's kernel-kind notation: 'C3', 'C2', 'C2sp', 'C4', 'C4sp', generally 'C<k>[sp]'."""

from __future__ import annotations

import dataclasses
import re

__all__ = ["KINDS", "KernelKind", "parse_kind"]

#: The kinds the paper compares.
KINDS: tuple[str, ...] = ("C3", "C2", "C2sp", "C4", "C4sp")

_PATTERN = re.compile(r"^C([1-9][0-9]*)(sp)?$")


@dataclasses.dataclass(frozen=True)
class KernelKind:
    """A parsed kind.

    Attributes:
      size: kernel extent per spatial axis (``k`` of ``C<k>``).
      symmetric: True for ``C<k>sp`` (symmetric padding); False for XLA's
        ``'SAME'``, which puts the extra zero of an even kernel bottom/right.
    """

    size: int
    symmetric: bool

    def __post_init__(self):
        # Caught here, not as an odd shape error in the first conv built from it.
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 1:
            raise ValueError(f"size must be a positive int, got {self.size!r}")
        if not isinstance(self.symmetric, bool):
            raise TypeError(f"symmetric must be a bool, got {self.symmetric!r}")

    @property
    def name(self) -> str:
        return f"C{self.size}{'sp' if self.symmetric else ''}"


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
    return KernelKind(size=int(match.group(1)), symmetric=match.group(2) is not None)
