"""Sphinx configuration: API pages from the docstrings (autodoc, Google style via napoleon).

Sphinx rather than MkDocs because jax, flax and optax document with it (Equinox alone uses MkDocs),
and autodoc + napoleon read our Google-style docstrings, with their RST roles and tables, as they are.

Build: ``python -m sphinx -W docs docs/_build/html`` (tests/library/test_docs.py builds it the same
way, warnings as errors). The examples on the pages and in the docstrings run as doctests in
tests/library/test_docs.py, not through sphinx.ext.doctest, so that the one pytest command checks them.
"""

from __future__ import annotations

import sys
from pathlib import Path

# autodoc imports the checkout's sympad, not an installed copy.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

project = "sympad"
author = "the sympad authors"
copyright = "2026, the sympad authors"  # Sphinx reads this name

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
exclude_patterns = ["_build"]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# Attributes as a field list: a class's attributes are not separate objects in the index.
napoleon_use_ivar = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "alabaster"
html_title = "sympad"
