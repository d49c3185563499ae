"""Writing the files a user asks for: checked before any work starts, never replacing a file unasked, never left
half-written, and readable as the user's other files are (their umask, not a temporary file's owner-only mode)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional

from rs_nerfstudio.validation import InputError


def check_outputs(paths: Iterable[Path], overwrite: bool) -> None:
    """One line of error, before any work is done, for an output that is a folder, that exists (unless
    ``overwrite``), or whose folder cannot be made or written to."""
    for path in map(Path, paths):
        if path.is_dir():
            raise InputError(f"{path} is a folder; name a file to write")
        if path.exists() and not overwrite:
            raise InputError(f"{path} exists; pass --overwrite to replace it")
        reason = unwritable_reason(path)
        if reason:
            raise InputError(reason)


def unwritable_reason(path: Path) -> Optional[str]:
    """Why ``path`` cannot be created (its nearest existing folder is a file, or not writable), or None."""
    ancestor = Path(path).absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"cannot write {path}: {ancestor} is a file, not a folder"
    try:  # a real file, not os.access: that asks about the real user id and may differ from a write on FUSE
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as error:
        return f"cannot write {path}: the folder {ancestor} is not writable ({error.strerror})"
    return None


def write_atomically(path: Path, write: Callable[[Path], None], overwrite: bool) -> None:
    """Write through a temporary file beside ``path`` and rename it into place."""
    check_outputs([path], overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        os.chmod(temporary, 0o666 & ~current_umask())  # mkstemp makes it 0600
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process's file-creation mask (reading it means setting it, so it is set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def metrics_json(metrics: Dict[str, float]) -> str:
    """Metrics as strict JSON, which has no NaN or infinity: a metric that could not be computed (no point in the
    band, every point abstained) is null, which every JSON reader accepts."""
    return json.dumps({key: value if math.isfinite(value) else None for key, value in metrics.items()}, indent=2)
