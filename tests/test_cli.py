"""The command line as a user meets it."""

import subprocess
import sys

from tests.conftest import ROOT


def cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "pipelines", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )


def test_bad_config_value_is_one_line_and_nonzero(tmp_path):
    out = cli("run", "--set", "train.steps=-5", "--tracking-uri", f"sqlite:///{tmp_path / 'runs.db'}", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["error: config key 'train.steps': expected a positive integer, got -5"]
    assert list(tmp_path.iterdir()) == []  # no store, no checkpoint, nothing half-written
