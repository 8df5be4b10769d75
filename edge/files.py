"""Atomic file writes: a reader (a daemon reloading a calibration, a backend loading a bundle)
sees the old file or the new one, never half of one, even after a crash or power cut."""
from __future__ import annotations

import json
import os
from pathlib import Path


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Write `data` (str as UTF-8) to `path` through a temporary file beside it, flushed to disk
    before it replaces `path`; missing parent directories are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name of this writer's own, so two processes saving the same file never share one.
    tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the name points at it
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_dir(path.parent)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=1) + "\n")


def _sync_dir(directory: Path) -> None:
    """Make the rename itself durable; best effort (not every platform opens directories)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
