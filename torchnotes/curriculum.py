"""The curriculum: every numbered note, in learning order, with its one-line summary."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Topic folders in learning order (the README's order).
TOPICS = ("autograd", "data_pipeline", "nn_modules", "checkpointing", "training", "advanced")
SCRIPT_NAME = re.compile(r"^\d\d_[A-Za-z0-9_]+\.py$")


@dataclass(frozen=True)
class Note:
    topic: str
    path: Path
    summary: str

    @property
    def name(self) -> str:
        return f"{self.topic}/{self.path.name}"


def summary_of(path: Path) -> str:
    """First line of a script's docstring, read without importing it."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return doc.strip().splitlines()[0] if doc and doc.strip() else "(no docstring)"


def notes(root: Path = REPO_ROOT) -> list[Note]:
    """Every ``NN_topic.py`` under the topic folders, in learning order."""
    found = []
    for topic in TOPICS:
        folder = root / topic
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if SCRIPT_NAME.match(path.name):
                    found.append(Note(topic, path, summary_of(path)))
    return found
