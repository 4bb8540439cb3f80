"""The docs site builds with `mkdocs build --strict` (no broken link, reference or docstring warning)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_site_builds_strictly(tmp_path):
    mkdocs = Path(sys.executable).parent / "mkdocs"
    if not mkdocs.exists() and shutil.which("mkdocs") is None:
        pytest.fail("mkdocs is not installed: ./dev installs the docs extra (pip install -e .[test,docs])")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    r = subprocess.run([str(mkdocs) if mkdocs.exists() else "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    for page in ("index.html", "reference/api/index.html", "reference/cli/index.html", "concepts/samplers/index.html"):
        assert (tmp_path / "site" / page).is_file(), page
    samplers = (tmp_path / "site" / "concepts/samplers/index.html").read_text()
    assert "dpm_solver" in samplers and "euler_maruyama" in samplers      # the generated table is there
    cli = (tmp_path / "site" / "reference/cli/index.html").read_text()
    assert "scoresde train" in cli and "--checkpoint" in cli
