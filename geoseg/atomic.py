"""Writing a file whole or not at all: write to a temporary name beside it, then rename (atomic on one file
system). Used for every file geoseg writes outside a run's staging folder: models and cards, gates, training
checkpoints, job manifests and summaries, calibration plots, demo scenes."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def temporary_name(path: str | os.PathLike) -> Path:
    """``.NAME.tmp-PID`` beside ``path``: hidden, this process's own, and recognisable as a leftover after a kill."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary name to write ``path`` under; renamed to ``path`` when the block ends, removed if it raises.
    Writers that infer a format from the file name must be told the format."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
