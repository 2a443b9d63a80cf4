"""The console script's basics."""

from __future__ import annotations

import subprocess
import sys

from captum_clip import __version__
from captum_clip.cli import main


def test_version_and_help(capsys):
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert __version__ in capsys.readouterr().out
    assert main([]) == 2
    assert "usage: captum-clip" in capsys.readouterr().err


def test_module_entry_point_runs():
    out = subprocess.run(
        [sys.executable, "-m", "captum_clip", "--help"], capture_output=True, text=True, check=True
    )
    assert "Explain CLIP" in out.stdout
