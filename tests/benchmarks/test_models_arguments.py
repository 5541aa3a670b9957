"""benchmarks.models rejects a bad selection with one ``error:`` line (status 2) before building
any model, where a misspelt suite used to select nothing and exit 0."""

from __future__ import annotations

import pytest

from benchmarks import common, models
from sympad.train import errors


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--suites=nope"], "error: --suites: unknown 'nope'; choose from resnet, table1, sngan, resnet19"),
        (["--suites=resnet,nope"], "error: --suites: unknown 'nope'; choose from resnet, table1, sngan, resnet19"),
        (["--suites="], "error: --suites: empty; choose from resnet, table1, sngan, resnet19"),
        (["--kinds=C2x"], "error: --kinds: unknown 'C2x'; choose from C3, C2, C2sp, C4, C4sp or any 'C<k>' / 'C<k>sp'"),
        (["--formulations=fast"], "error: --formulations: unknown 'fast'; choose from auto, pad_select,"),
        (["--depths=abc"], "error: --depths: expected comma-separated positive ints, got 'abc'"),
        (["--batches=0"], "error: --batches: expected comma-separated positive ints, got '0'"),
        (
            ["--tiny", "--suites=resnet", "--depths=57"],
            "error: --depths/--batches: no case matches 57 / any; --tiny sizes of resnet have depths 8, batches 2",
        ),
    ],
)
def test_bad_selection_is_one_error_line(argv, line, capsys):
    with pytest.raises(SystemExit) as exit_info:
        errors.run_cli(models.main, argv)
    assert exit_info.value.code == errors.USER_ERROR_STATUS
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing measured, not even the environment record
    assert captured.err.startswith(line) and captured.err.count("\n") == 1


def test_build_cases_names_an_unknown_suite():
    with pytest.raises(ValueError, match=r"suites: unknown 'nope'; choose from resnet, table1, sngan, resnet19"):
        models.build_cases(models.TINY, suites=["nope"])


def test_good_selection_still_builds_its_cases():
    # The parsing helpers keep what the flags always meant (no model is built or compiled here).
    assert models._names("--suites", "resnet, sngan", models.SUITES) == ["resnet", "sngan"]
    assert common.parse_kinds("C2sp,C5") == ["C2sp", "C5"]
    assert models._ints("--depths", "20,56") == [20, 56]
    assert models._ints("--depths", None) is None
    cases = models.build_cases(models.TINY, suites=["resnet"], kinds=["C3", "C2sp"], depths=[8])
    assert [c.label for c in cases] == ["C3", "C2sp"]
