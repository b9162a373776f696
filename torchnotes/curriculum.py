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


# ``advanced/`` holds one more level: ``advanced/<subtopic>/NN_name.py``, subtopics in this order.
ADVANCED = ("training_engineering", "loss_functions", "model_architecture", "peft",
            "generative_models", "evaluation_inference", "multimodal")


@dataclass(frozen=True)
class Note:
    topic: str          # "autograd", ..., or "advanced/loss_functions"
    path: Path
    summary: str

    @property
    def name(self) -> str:
        return f"{self.topic}/{self.path.name}"


def summary_of(path: Path) -> str:
    """First line of a script's docstring, read without importing it."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return doc.strip().splitlines()[0] if doc and doc.strip() else "(no docstring)"


def topic_folders(root: Path = REPO_ROOT) -> list[str]:
    """Topic folders relative to ``root``, in learning order (advanced subtopics expanded)."""
    folders = [t for t in TOPICS if t != "advanced"]
    advanced = root / "advanced"
    if advanced.is_dir():
        subs = sorted((p.name for p in advanced.iterdir() if p.is_dir()),
                      key=lambda n: (ADVANCED.index(n) if n in ADVANCED else len(ADVANCED), n))
        folders += [f"advanced/{name}" for name in subs]
    return folders


def notes(root: Path = REPO_ROOT) -> list[Note]:
    """Every ``NN_topic.py`` under the topic folders, in learning order."""
    found = []
    for topic in topic_folders(root):
        folder = root / topic
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if SCRIPT_NAME.match(path.name):
                    found.append(Note(topic, path, summary_of(path)))
    return found


def repo_relative(script: str | Path) -> str:
    """``advanced/peft/01_lora_principle.py`` for a note's ``__file__`` (topic path + name)."""
    path = Path(script).resolve()
    parts = path.parent.parts
    if len(parts) >= 2 and parts[-2] == "advanced":
        return f"advanced/{parts[-1]}/{path.name}"
    return f"{path.parent.name}/{path.name}"
