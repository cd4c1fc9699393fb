"""A run's output directory: what it may hold, when it is reused, and the settings check on resume.

Nothing is lost: a directory that holds a run is refused unless the run is resumed (with the
same settings, compared by :func:`settings_diff`) or ``overwrite`` is asked for; writability is
checked before the first step; temporary files of an interrupted atomic write are removed.
:func:`settings_diff` is also what ``structconv compare`` uses to keep or refuse finished runs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Mapping

from .. import validation as v
from .._io import json_safe, remove_stale_temp_files
from ..serialization import read_checkpoint
from .config import TrainConfig, saved_meaning

__all__ = ["CHECKPOINT", "RUN_FILES", "prepare_output", "settings_diff", "check_resume", "format_diff"]

CHECKPOINT = "checkpoint.pth"
#: files a run writes into its output directory
RUN_FILES = (CHECKPOINT, "model.pth", "model_decomposed.pth", "results.json", "metrics.csv", "log.jsonl")


def _same(old, new) -> bool:
    if old == new:
        return True
    numbers = (int, float)
    return isinstance(old, numbers) and isinstance(new, numbers) and float(old) == float(new)


def settings_diff(saved: Mapping, wanted: Mapping) -> list[tuple[str, object, object]]:
    """``(key, saved value, wanted value)`` for every setting of ``wanted`` that ``saved`` records
    differently (both JSON-normalized first; ``1`` and ``1.0`` are the same).  Keys that
    ``saved`` does not record are not compared: they were added after it was written."""
    saved, wanted = json_safe(dict(saved)), json_safe(dict(wanted))
    return [(k, saved[k], val) for k, val in wanted.items() if k in saved and not _same(saved[k], val)]


def format_diff(changes: list[tuple[str, object, object]], *, values: bool = True) -> tuple[str, dict]:
    """``changes`` as a :class:`~structconv.validation.ArgumentError` template fragment and its
    literals: ``"{lr} 0.1 -> 0.05; {lam} 1.0 -> 3.0"`` (``values=False``: the settings only), so
    the command line names each setting by its flag."""
    literals: dict[str, str] = {}
    parts = []
    for i, (key, old, new) in enumerate(changes):
        if values:
            literals[f"_old{i}"], literals[f"_new{i}"] = repr(old), repr(new)
            parts.append("{%s} {_old%d} -> {_new%d}" % (key, i, i))
        else:
            parts.append("{%s}" % key)
    return ("; " if values else ", ").join(parts), literals


def check_resume(config: TrainConfig, ckpt: dict, path: Path) -> None:
    """Refuse to resume ``ckpt`` (read from ``path``) with settings other than it was trained with."""
    recorded = ckpt["config"] if "config" in ckpt else (ckpt.get("args") or {})
    changed = settings_diff(saved_meaning(recorded), config.meaning())
    if changed:
        what, literals = format_diff(changed)
        raise v.ArgumentError(
            "{resume}={path} was trained with other settings (" + what + "); resume with the original ones, "
            "or start a new {output_dir}",
            path=repr(str(path)),
            **literals,
        )


def prepare_output(config: TrainConfig, *, is_main: bool = True) -> tuple[Path, dict | None]:
    """Check the output directory before any work: it must be a writable directory, and it may
    hold an earlier run only to ``resume`` it or, with ``overwrite``, to replace it.  Removes the
    temporary files an interrupted checkpoint write left.  Returns ``(directory, checkpoint to
    resume or None)``."""
    out = v.path(config.output_dir, "output_dir")
    if out.exists() and not out.is_dir():
        raise v.ArgumentError("{output_dir}={path} is a file, not a directory", path=repr(str(out)))
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise v.ArgumentError(
                "{output_dir}={path}: {parent} is a file, not a directory",
                path=repr(str(out)),
                parent=repr(str(parent)),
            )
    existing = [name for name in RUN_FILES if (out / name).exists()]
    ckpt = None
    if config.resume:
        path = out / CHECKPOINT if config.resume == "auto" else v.path(config.resume, "resume")
        if not path.is_file():
            raise FileNotFoundError(f"resume: checkpoint {str(path)!r} does not exist")
        ckpt = read_checkpoint(path)
        if "optimizer" not in ckpt or "global_step" not in ckpt:
            raise v.ArgumentError(
                "{resume}={path} is a final model, not a training checkpoint; resume from the run's {name}",
                path=repr(str(path)),
                name=CHECKPOINT,
            )
        check_resume(config, ckpt, path)
        ckpt["_path"] = str(path)
    elif existing and not config.overwrite:
        raise v.ArgumentError(
            "{output_dir}={path} already holds a run ({files}); continue it with {resume}, choose a new "
            "{output_dir}, or pass {overwrite} to replace it",
            path=repr(str(out)),
            files=", ".join(existing),
        )
    if is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test.", suffix=".tmp"):
                pass
        except OSError as err:
            raise OSError(f"output directory {str(out)!r} is not writable: {err.strerror or err}") from None
        remove_stale_temp_files(out)
        if config.overwrite and not config.resume:
            for name in existing:
                (out / name).unlink()
    return out, ckpt
