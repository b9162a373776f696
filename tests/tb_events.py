"""Read TensorBoard event files back with TensorBoard's own reader (for the tests)."""

from __future__ import annotations

from pathlib import Path


def read_events(log_dir: str | Path) -> dict:
    """Every run under ``log_dir``: ``{run_dir: {"scalars": {tag: [steps]},
    "images": {tag: [steps]}, "graph": bool}}``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = {}
    files = sorted(Path(log_dir).rglob("events.out.tfevents.*"))
    for run_dir in sorted({f.parent for f in files}):
        acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
        acc.Reload()
        tags = acc.Tags()
        runs[run_dir] = {
            "scalars": {t: [e.step for e in acc.Scalars(t)] for t in tags.get("scalars", [])},
            "images": {t: [e.step for e in acc.Images(t)] for t in tags.get("images", [])},
            "graph": bool(tags.get("graph")),
        }
    return runs


def merged(log_dir: str | Path) -> dict:
    """All runs under ``log_dir`` merged: ``{"scalars": {tag: steps}, "images": ..., "graph"}``."""
    out = {"scalars": {}, "images": {}, "graph": False}
    for run in read_events(log_dir).values():
        for kind in ("scalars", "images"):
            for tag, steps in run[kind].items():
                out[kind].setdefault(tag, []).extend(steps)
        out["graph"] = out["graph"] or run["graph"]
    return out


def image_sizes(log_dir: str | Path) -> dict:
    """``{tag: [(width, height), ...]}`` of every image record under ``log_dir``, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sizes = {}
    for run_dir in sorted({f.parent for f in Path(log_dir).rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(run_dir), size_guidance={"images": 0})
        acc.Reload()
        for tag in acc.Tags().get("images", []):
            sizes.setdefault(tag, []).extend((e.width, e.height) for e in acc.Images(tag))
    return sizes
