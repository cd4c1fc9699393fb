"""Atomic writes: a crash leaves either the old file or the new one, never a truncated one."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = ["atomic_write", "atomic_save", "atomic_write_json", "json_safe", "remove_stale_temp_files"]

_TMP_SUFFIX = ".tmp"


def atomic_write(path: str | os.PathLike, write: Callable, mode: str) -> None:
    """Write through ``write(file)`` into a temporary file beside ``path``, fsync, rename over it.

    Any failure (a full disk included) removes the temporary file and raises ``OSError`` naming
    ``path``; torch's serializer reports a full disk as a ``RuntimeError``, converted here.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    except OSError as err:
        raise OSError(err.errno, f"cannot write {str(path)!r}: {err.strerror or err}") from None
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; give it the usual mode
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        # torch's zip writer reports a failed write (ENOSPC, EFBIG, EIO) as a RuntimeError
        if isinstance(err, RuntimeError) and any(
            k in str(err) for k in ("inline_container", "PytorchStreamWriter", "write")
        ):
            raise OSError(
                f"could not write {str(path)!r} (disk full or quota exceeded?): {str(err).splitlines()[0]}"
            ) from None
        if isinstance(err, OSError) and not isinstance(err, FileNotFoundError):
            raise OSError(err.errno, f"could not write {str(path)!r}: {err.strerror or err}") from None
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: torch.save(obj, f), "wb")


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by ``None``, tuples by lists and paths by
    strings: what strict JSON parsers accept."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def atomic_write_json(obj: Any, path: str | os.PathLike, **dump_kwargs: Any) -> None:
    """``json.dump`` ``obj`` to ``path`` atomically, as strict JSON (see :func:`json_safe`)."""
    atomic_write(path, lambda f: json.dump(json_safe(obj), f, allow_nan=False, **dump_kwargs), "w")


def remove_stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files an interrupted :func:`atomic_write` left in ``directory``
    (``.<name>.<random>.tmp``); returns what was removed."""
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for p in directory.glob(f".*{_TMP_SUFFIX}"):
        if p.is_file():
            p.unlink()
            removed.append(p)
    return removed
