"""The READMEs tell the truth: their tables match the scripts on disk, and their commands run.

Every ``python ...`` line in a fenced ``bash`` block of README.md is run as a real subprocess
from the repo root. A command that asks for ``--device cuda`` on a machine without CUDA must
fail cleanly (exit 2, a message naming what is available) instead of being skipped.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest
import torch
from conftest import BACKGROUND, PREEXEC, REPO_ROOT, background

from torchnotes.curriculum import TOPICS, notes

READMES = ("README.md", "README.zh-CN.md")
ROW_LINK = re.compile(r"^\|.*?\]\((?P<path>(?:" + "|".join(TOPICS)
                      + r")/(?:\w+/)?\d\d_\w+\.py)\)")


def table_scripts(readme: str) -> list[str]:
    text = (REPO_ROOT / readme).read_text(encoding="utf-8")
    return [m["path"] for line in text.splitlines() if (m := ROW_LINK.match(line))]


def bash_commands(readme: str) -> list[str]:
    text = (REPO_ROOT / readme).read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines()
            if line.strip() and not line.strip().startswith("#")]


@pytest.mark.parametrize("readme", READMES)
def test_tables_match_the_scripts_on_disk(readme):
    on_disk = [n.name for n in notes()]
    listed = table_scripts(readme)
    assert sorted(set(listed)) == sorted(listed), f"{readme} lists a script twice"
    missing, stale = set(on_disk) - set(listed), set(listed) - set(on_disk)
    assert not missing, f"{readme} has no table row for: {sorted(missing)}"
    assert not stale, f"{readme} lists scripts that do not exist: {sorted(stale)}"
    assert listed == on_disk, f"{readme} tables are not in learning order"


def test_both_readmes_show_the_same_commands():
    assert bash_commands("README.md") == bash_commands("README.zh-CN.md")


def test_ci_runs_the_readme_install_and_test_commands():
    commands = bash_commands("README.md")
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    install = [c for c in commands if c.startswith("pip install")]
    tests = [c for c in commands if c.startswith("python -m pytest") and "--device" not in c]
    assert install == ["pip install -r requirements.txt"]
    assert "python -m pip install -r requirements.txt" in ci
    assert tests == ["python -m pytest"] and "\npython -m pytest\n" in ci


def _python_commands() -> list[str]:
    return [c for c in bash_commands("README.md")
            if c.startswith("python ") and not c.startswith("python -m pytest")]


CHECK_UNDER_O = ("from torchnotes import check, ClaimError\n"
                 "try:\n    check('false claim', False)\nexcept ClaimError:\n"
                 "    print('raised')\n")


def _start_commands(folder):
    """Every README command and ``python -O`` at once (each imports torch: side by side),
    right after collection (tests/conftest.py); the tests below collect them."""
    runs = folder / "runs"
    env = {**os.environ, "TORCHNOTES_RUNS": str(runs), "PYTHONIOENCODING": "utf-8"}
    env.pop(  # the README's commands must work in a shell where the user set nothing
        "TORCHNOTES_DEVICE", None)
    argvs = {}
    for cmd in _python_commands():
        argv = shlex.split(cmd)
        argv[0] = sys.executable
        argvs[cmd] = (argv, REPO_ROOT, env)
    (folder / "cwd").mkdir()
    argvs["-O"] = ([sys.executable, "-O", "-c", CHECK_UNDER_O], folder / "cwd", None)
    started = {}
    for i, (cmd, (argv, cwd, env)) in enumerate(argvs.items()):
        out, err = folder / f"{i}.out", folder / f"{i}.err"
        with open(out, "w") as o, open(err, "w") as e:
            started[cmd] = (subprocess.Popen(argv, cwd=cwd, env=env, stdout=o, stderr=e,
                                             preexec_fn=PREEXEC),
                            out, err)
    return started, [proc for proc, _, _ in started.values()]


BACKGROUND["readme_runs"] = _start_commands


@pytest.fixture(scope="module")
def readme_runs():
    """``{command: (exit code, stdout, stderr)}``, waiting for those still running."""
    results = {}
    for cmd, (proc, out, err) in background("readme_runs").items():
        proc.wait(timeout=300)
        results[cmd] = (proc.returncode, out.read_text(encoding="utf-8"),
                        err.read_text(encoding="utf-8"))
    return results


def test_readme_has_runnable_commands():
    cmds = _python_commands()
    assert "python -m torchnotes" in cmds
    assert "python autograd/02_autograd_basics.py" in cmds
    assert any("--device cuda" in c for c in cmds)


@pytest.mark.parametrize("cmd", _python_commands())
def test_readme_command_runs(cmd, readme_runs):
    code, out, err = readme_runs[cmd]
    if "--device cuda" in cmd and not torch.cuda.is_available():
        assert code == 2, (out, err)
        assert "CUDA is not available here" in err and "Available here: cpu" in err, err
        return
    assert code == 0, f"{cmd} failed:\n{out}\n{err}"
    if cmd == "python -m torchnotes":
        assert "torch " in out and "Curriculum:" in out
        assert "autograd/" in out and "02_autograd_basics.py" in out
    else:
        assert out.count("✓") >= 3, out


def test_check_still_raises_under_python_O(readme_runs):
    code, out, err = readme_runs["-O"]
    assert code == 0 and out.strip() == "raised", err
