"""The README's usage example runs as written."""

from __future__ import annotations

import re
from pathlib import Path


def test_usage_example_runs(capsys):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    usage = readme[readme.index("## Usage"):]
    code = re.search(r"```python\n(.*?)```", usage, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "(8, 32, 32, 32)" in printed
