"""Every numbered note, imported by path and run in smoke mode on the selected device.

A new script is covered the moment it exists: the list comes from the topic folders.
"""

from __future__ import annotations

import sys

import pytest
from conftest import import_note

from torchnotes import passed_claims, reset_claims
from torchnotes.curriculum import notes

NOTES = notes()
MIN_CHECKS = 3


def test_curriculum_is_not_empty():
    assert len(NOTES) >= 9, [n.name for n in NOTES]


@pytest.mark.parametrize("item", NOTES, ids=[n.name for n in NOTES])
def test_note_runs_in_smoke_mode(item, device_name, tmp_path, capsys, monkeypatch):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)                         # anything written to the cwd lands here
    monkeypatch.setenv("TORCHNOTES_RUNS", str(tmp_path / "default-runs"))
    monkeypatch.setattr(sys, "argv", [str(item.path)])

    module = import_note(item.path)
    imported = capsys.readouterr()
    assert imported.out == "" and imported.err == "", "importing a note must print nothing"
    assert callable(getattr(module, "main", None)), f"{item.name} has no main(argv)"

    out_dir = tmp_path / "out"
    reset_claims()
    result = module.main(["--smoke", "--device", device_name, "--out-dir", str(out_dir)])
    printed = capsys.readouterr().out

    assert isinstance(result, dict) and result, f"{item.name}: main() must return a dict"
    claims = passed_claims()
    assert len(claims) >= MIN_CHECKS, (
        f"{item.name} proved {len(claims)} claims with check(); at least {MIN_CHECKS} expected")
    assert printed.count("✓") >= MIN_CHECKS
    assert list(work.iterdir()) == [], f"{item.name} wrote into the current directory"
    assert not (tmp_path / "default-runs").exists(), f"{item.name} ignored --out-dir"
