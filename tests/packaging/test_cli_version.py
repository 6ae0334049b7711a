"""``sdediff --version`` prints the package version and exits 0, with or without a subcommand."""

from __future__ import annotations

import pytest

import sdediff
from sdediff.cli import main


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"sdediff {sdediff.__version__}"


def test_no_command_is_still_an_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "required" in capsys.readouterr().err
