"""The examples write to a fresh, git-ignored folder of their own by default, never over tracked files
(issue 33, item 7)."""
import importlib.util
import os
import subprocess

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
EXAMPLES = sorted(f for f in os.listdir(os.path.join(ROOT, "examples")) if f.endswith(".py"))


def load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name[:-3]}", os.path.join(ROOT, "examples", name))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", [n for n in EXAMPLES if "--out" in open(os.path.join(ROOT, "examples", n)).read()])
def test_an_example_writes_to_its_own_ignored_folder_by_default(name):
    out = os.path.abspath(load(name).parse_args([]).out)
    assert out == os.path.join(ROOT, "out", name[:-3])
    git = ["git", "-C", ROOT]
    if subprocess.run([*git, "rev-parse"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    assert subprocess.run([*git, "check-ignore", "-q", out], capture_output=True).returncode == 0   # ignored
    assert subprocess.run([*git, "ls-files", out], capture_output=True, text=True).stdout == ""     # nothing tracked


def test_every_example_that_writes_files_takes_out():
    for name in EXAMPLES:
        text = open(os.path.join(ROOT, "examples", name)).read()
        assert ("savefig" in text or "np.save" in text) <= ("--out" in text), name
