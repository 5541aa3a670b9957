"""The layers' import rules (README "Layout"), read from the source with ``ast``.

Bottom to top: the library (``sympad``, not ``sympad.train``), the shared runtime
(``sympad.train``), the suites (``gan``, ``classify``), the paper layer (``paper``), then
``configs`` and ``benchmarks``. Every import counts, also one inside a function: a lazy import
is still a dependency.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: Third-party packages the library may import: what ``pip install sympad`` installs.
LIBRARY_DEPENDENCIES = {"jax", "jaxlib", "numpy", "flax"}
#: Optional integrations of the library, each allowed in its own module only (an extra).
LIBRARY_EXTRAS = {"equinox": "sympad/equinox.py"}

_PROJECT = ("sympad", "gan", "classify", "paper", "configs", "benchmarks", "tests")


def _layer(module: str) -> str | None:
    """The layer of a project module name, or None for third-party and stdlib modules."""
    top = module.split(".")[0]
    if top not in _PROJECT:
        return None
    if module == "sympad.train" or module.startswith("sympad.train."):
        return "runtime"
    return "library" if top == "sympad" else top


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_name(path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.append((node.lineno, base))
            # `from gan import sample` imports the module gan.sample.
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names
                      if (REPO / Path(*f"{base}.{alias.name}".split("."))).with_suffix(".py").exists()]
    return found


def _is_cli(module: str) -> bool:
    path = (REPO / Path(*module.split("."))).with_suffix(".py")
    return path.exists() and '__name__ == "__main__"' in path.read_text(encoding="utf-8")


def _sources(*tops: str) -> list[Path]:
    return sorted(p for top in tops for p in (REPO / top).rglob("*.py") if ".venv" not in p.parts)


#: Which layers each layer may import (its own included).
ALLOWED = {
    "library": {"library"},
    "runtime": {"library", "runtime"},
    "gan": {"library", "runtime", "gan"},
    "classify": {"library", "runtime", "classify"},
    "paper": {"library", "runtime", "gan", "classify", "paper"},
    "configs": {"library", "runtime", "gan", "classify", "configs"},
    # paper.shared_data finds the checkout's CIFAR-10 archives for the data benchmark too.
    "benchmarks": {"library", "runtime", "gan", "classify", "paper", "benchmarks"},
}


def _violations() -> list[str]:
    out = []
    for path in _sources("sympad", "gan", "classify", "paper", "configs", "benchmarks"):
        name = _module_name(path)
        layer = _layer(name)
        rel = path.relative_to(REPO).as_posix()
        for line, module in _imports(path):
            target = _layer(module)
            where = f"{rel}:{line} imports {module}"
            if target is None:
                top = module.split(".")[0]
                if layer == "library" and top not in sys.stdlib_module_names and top not in LIBRARY_DEPENDENCIES \
                        and LIBRARY_EXTRAS.get(top) != rel:
                    out.append(f"{where}: the library depends on {sorted(LIBRARY_DEPENDENCIES)} only")
                continue
            if target not in ALLOWED[layer]:
                out.append(f"{where}: layer '{layer}' may not import layer '{target}'")
            # benchmarks.all composes the benchmark harnesses, which are CLIs of their own.
            elif _is_cli(module) and not (layer == target == "benchmarks"):
                out.append(f"{where}: {module} is a command-line module; move what is shared into a library module")
    return out


def test_layers_import_only_downwards_and_no_cli_module():
    assert _violations() == []


#: The GAN trainer (DiffAugment, the train step, the input pipeline) and who may import it: sampling,
#: export and evaluation rebuild a run from gan.state alone; the seeds benchmark times the real step.
TRAINER = {"gan.train": {"gan.main"}, "gan.step": {"gan.train", "benchmarks.seeds"}}


def test_only_the_trainer_imports_the_train_step():
    found = [f"{path.relative_to(REPO).as_posix()}:{line} imports {module}"
             for path in _sources("sympad", "gan", "classify", "paper", "configs", "benchmarks")
             for line, module in _imports(path)
             if module in TRAINER and _module_name(path) not in TRAINER[module]]
    assert found == [], "import gan.state (models, TrainState, restore_state) instead"


def _outside_private_module(module: str, importer: str) -> bool:
    """True where ``module`` lies in a private module (``pkg._name``) and ``importer`` is not in ``pkg``.

    A leading-underscore module is its package's own, shared by the modules inside it (as ``jax._src``
    is shared by ``jax.numpy`` and ``jax.lax``); everything outside takes the package's public names.
    """
    parts = module.split(".")
    for i, part in enumerate(parts[1:], 1):
        if part.startswith("_") and not part.startswith("__"):
            package = ".".join(parts[:i])
            return not (importer == package or importer.startswith(package + "."))
    return False


def _is_module(name: str) -> bool:
    path = REPO / Path(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _hygiene_violations(*tops: str) -> list[str]:
    """Project imports inside ``try: ... except ImportError``, private names taken from another module,
    and private modules imported from outside their package."""
    out = []
    for path in _sources(*tops):
        rel, tree = path.relative_to(REPO).as_posix(), ast.parse(path.read_text(encoding="utf-8"))
        importer = _module_name(path)
        modules = {alias.asname or alias.name.split(".")[0]: alias.name
                   for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        modules |= {alias.asname or alias.name: f"{node.module}.{alias.name}" for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.module for alias in node.names}
        for node in ast.walk(tree):
            if isinstance(node, ast.Try) and any(
                    isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                    for h in node.handlers):
                for inner in (n for stmt in node.body for n in ast.walk(stmt)):
                    names = ([a.name for a in inner.names] if isinstance(inner, ast.Import)
                             else [inner.module or ""] if isinstance(inner, ast.ImportFrom) else [])
                    out += [f"{rel}:{inner.lineno} guards the project import {name} with except ImportError"
                            for name in names if _layer(name)]
            if isinstance(node, ast.Import):
                out += [f"{rel}:{node.lineno} imports {a.name}, private to its package"
                        for a in node.names if _layer(a.name) and _outside_private_module(a.name, importer)]
            elif isinstance(node, ast.ImportFrom) and _layer(node.module or ""):
                targets = [f"{node.module}.{a.name}" for a in node.names]
                out += [f"{rel}:{node.lineno} imports {name}, private to its package"
                        for name in [node.module] + [t for t in targets if _is_module(t)]
                        if _outside_private_module(name, importer)]
                out += [f"{rel}:{node.lineno} imports the private {target}"
                        for a, target in zip(node.names, targets) if a.name.startswith("_") and not _is_module(target)]
            elif (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                  and isinstance(node.value, ast.Name) and _layer(modules.get(node.value.id, ""))):
                out.append(f"{rel}:{node.lineno} uses the private {modules[node.value.id]}.{node.attr}")
    return sorted(out)


def test_no_import_guards_or_private_names_across_modules():
    """A bug inside a project module must not pass for a missing extra (it once switched FID off in
    training without a word), and a module's private helpers stay its own."""
    assert _hygiene_violations("sympad", "gan", "classify", "paper", "configs", "benchmarks") == []


def _fake_repo(root: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str]) -> None:
    """A tree of ``files`` (path -> text) at ``root``, which the checkers then read as the repository."""
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "REPO", root)


def test_the_rule_checker_sees_violations(tmp_path, monkeypatch):
    """The checker itself can fail: a library module that imports the runtime, a lazy suite import
    in the runtime and an import of a CLI module are all reported."""
    _fake_repo(tmp_path / "repo", monkeypatch, {
        "sympad/__init__.py": "",
        "sympad/ops.py": "import optax\nfrom sympad.train import data\n",
        "sympad/train/__init__.py": "",
        "sympad/train/data.py": "def f():\n    from gan import models\n",
        "gan/__init__.py": "",
        "gan/models.py": "from classify import train\nfrom gan import sample\n",
        "gan/sample.py": 'if __name__ == "__main__":\n    pass\n',
        "classify/__init__.py": "",
        "classify/train.py": "",
    })
    found = "\n".join(_violations())
    assert "sympad/ops.py:1 imports optax: the library depends on" in found
    assert "sympad/ops.py:2 imports sympad.train: layer 'library' may not import layer 'runtime'" in found
    assert "sympad/train/data.py:2 imports gan: layer 'runtime' may not import layer 'gan'" in found
    assert "gan/models.py:1 imports classify: layer 'gan' may not import layer 'classify'" in found
    assert "gan/models.py:2 imports gan.sample: gan.sample is a command-line module" in found


def test_the_hygiene_checker_sees_violations(tmp_path, monkeypatch):
    """The hygiene checker itself can fail: a guarded project import, a private name taken by import
    or by attribute, and a private module imported from outside its package are reported; a private
    module's public names taken inside its package are not."""
    _fake_repo(tmp_path / "repo", monkeypatch, {
        "sympad/__init__.py": "",
        "sympad/_shared.py": "def helper():\n    pass\n",
        "sympad/ops.py": "from sympad._shared import helper\nfrom sympad import _shared\n",
        "sympad/linen.py": "def _check():\n    pass\n",
        "sympad/nnx.py": "from sympad.linen import _check\nfrom sympad import linen\nlinen._check()\n",
        "gan/__init__.py": "",
        "gan/models.py": "try:\n    from sympad import linen\nexcept ImportError:\n    linen = None\n",
        "benchmarks/__init__.py": "",
        "benchmarks/ops.py": "from sympad._shared import helper\nimport sympad._shared\n",
    })
    assert _hygiene_violations("sympad", "gan", "benchmarks") == [
        "benchmarks/ops.py:1 imports sympad._shared, private to its package",
        "benchmarks/ops.py:2 imports sympad._shared, private to its package",
        "gan/models.py:2 guards the project import sympad with except ImportError",
        "sympad/nnx.py:1 imports the private sympad.linen._check",
        "sympad/nnx.py:3 uses the private sympad.linen._check",
    ]


@pytest.mark.parametrize("module", ["sympad", "sympad.linen", "sympad.nnx", "sympad.kinds", "sympad.ops"])
def test_library_modules_are_library_layer(module):
    assert _layer(module) == "library"
    assert _layer("sympad.train.data") == "runtime"
