"""The documentation: it builds warning-free, documents every public name, and every example in
it (pages under docs/ and docstrings of the library, sympad/ without sympad.train) runs as a
doctest."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import io
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import sympad

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
PAGES = sorted(DOCS.glob("*.rst"))
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
HAS_EQUINOX = importlib.util.find_spec("equinox") is not None
NO_EQUINOX = "the equinox extra is not installed (pip install -e '.[equinox]')"


def _library_modules(package: str = "sympad") -> list[str]:
    """Every module of the library layer: sympad and its submodules but the runtime (sympad.train),
    found without importing it (pkgutil.walk_packages would import every subpackage)."""
    names = [package]
    for info in pkgutil.iter_modules(importlib.import_module(package).__path__, package + "."):
        if info.name == "sympad.train":
            continue
        names += _library_modules(info.name) if info.ispkg else [info.name]
    return sorted(names)


def _run(tests: list[doctest.DocTest]) -> tuple[doctest.TestResults, str]:
    out = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for test in tests:
        runner.run(test, out=out.write)
    return doctest.TestResults(runner.failures, runner.tries), out.getvalue()


def _page_test(text: str, name: str) -> doctest.DocTest:
    return doctest.DocTestParser().get_doctest(text, {"__name__": name}, name, name, 0)


@pytest.mark.parametrize("module_name", _library_modules())
def test_docstring_examples_run(module_name):
    if module_name == "sympad.equinox" and not HAS_EQUINOX:
        pytest.skip(NO_EQUINOX)
    module = importlib.import_module(module_name)
    tests = doctest.DocTestFinder(exclude_empty=True).find(module, module_name)
    results, report = _run(tests)
    assert results.failed == 0, report


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_examples_run(page):
    text = page.read_text(encoding="utf-8")
    if "import equinox" in text and not HAS_EQUINOX:
        pytest.skip(NO_EQUINOX)
    results, report = _run([_page_test(text, page.name)])
    assert results.failed == 0, report


def test_doctest_runner_reports_failures():
    """The harness can fail: a wrong expected output and an exception are both counted."""
    results, report = _run([_page_test(">>> 1 + 1\n3\n\n>>> undefined_name\n", "bad.rst")])
    assert results == (2, 2)
    assert "Expected:\n    3" in report and "NameError" in report


@pytest.mark.parametrize("module_name", ["sympad.linen", "sympad.nnx", "sympad.equinox"])
def test_module_apis_carry_examples(module_name):
    if module_name == "sympad.equinox" and not HAS_EQUINOX:
        pytest.skip(NO_EQUINOX)
    module = importlib.import_module(module_name)
    for name in module.__all__:
        assert ">>>" in (getattr(module, name).__doc__ or ""), f"{module_name}.{name} has no example"


def _sphinx(source: Path, out: Path) -> subprocess.CompletedProcess:
    # -W: a warning fails the build; --keep-going: report all of them, not just the first.
    return subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(source), str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )


@pytest.mark.integration
def test_docs_build_without_warnings_and_document_the_public_api(tmp_path):
    pytest.importorskip("sphinx", reason="the docs extra is not installed (pip install -e '.[docs]')")
    if not HAS_EQUINOX:
        pytest.skip(f"the API pages document sympad.equinox: {NO_EQUINOX}")
    build = _sphinx(DOCS, tmp_path / "html")
    assert build.returncode == 0, build.stdout + build.stderr
    html = {p.stem: p.read_text(encoding="utf-8") for p in (tmp_path / "html").glob("*.html")}
    assert {p.stem for p in PAGES} <= set(html)
    documented = set(re.findall(r'<dt class="sig[^"]*" id="([\w.]+)"', "\n".join(html.values())))
    public = {f"sympad.{name}" for name in sympad.__all__}
    public |= {f"sympad.{api}.{name}" for api in ("linen", "nnx", "equinox")
               for name in importlib.import_module(f"sympad.{api}").__all__}
    assert public - documented == set(), "public names without an API entry in docs/"
    # autodoc rendered the docstrings themselves, not just the names.
    assert "Drop-in for" in html["modules"] and "Convolution with symmetric padding" in html["semantics"]


@pytest.mark.integration
def test_a_warning_fails_the_docs_build(tmp_path):
    """The build command can fail: a page with a broken reference is an error, not a warning."""
    pytest.importorskip("sphinx", reason="the docs extra is not installed (pip install -e '.[docs]')")
    source = tmp_path / "src"
    source.mkdir()
    (source / "conf.py").write_text("project = 'x'\n")
    (source / "index.rst").write_text("Title\n=====\n\nSee :doc:`no-such-page`.\n")
    build = _sphinx(source, tmp_path / "html")
    assert build.returncode != 0
    assert "no-such-page" in build.stdout + build.stderr


@pytest.mark.parametrize("suite", ["gan", "classify"])
def test_suite_pages_name_every_config_and_only_real_commands(suite):
    page = (DOCS / f"{suite}.rst").read_text(encoding="utf-8")
    configs = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "configs" / suite).glob("*.py")
                     if p.name != "__init__.py")
    missing = [c for c in configs if c not in page]
    assert not missing, f"docs/{suite}.rst does not mention {missing}"
    for path in re.findall(r"configs/[\w/]+\.py", page):
        assert (REPO / path).is_file(), path
    for module in re.findall(r"python -m ([\w.]+)", page):
        assert importlib.util.find_spec(module) is not None, module
