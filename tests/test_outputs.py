"""Output files: refused before any work where they cannot be written or would replace a file; written whole."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from rs_nerfstudio.outputs import check_outputs, metrics_json, write_atomically
from rs_nerfstudio.validation import InputError


def test_existing_files_folders_and_files_in_the_way_are_refused(tmp_path: Path) -> None:
    existing = tmp_path / "mine.json"
    existing.write_text("mine")
    with pytest.raises(InputError, match="mine.json exists; pass --overwrite"):
        check_outputs([tmp_path / "new.json", existing], overwrite=False)
    check_outputs([existing], overwrite=True)
    with pytest.raises(InputError, match="is a folder"):
        check_outputs([tmp_path], overwrite=True)
    with pytest.raises(InputError, match="mine.json is a file, not a folder"):
        check_outputs([existing / "deeper" / "out.json"], overwrite=False)
    check_outputs([tmp_path / "new" / "folders" / "out.json"], overwrite=False)  # folders to make are fine


def test_a_folder_that_refuses_files_is_named_before_any_work(tmp_path: Path, monkeypatch) -> None:
    import errno

    from rs_nerfstudio import outputs

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(outputs.tempfile, "TemporaryFile", read_only)
    with pytest.raises(InputError, match=f"cannot write .*out.json: the folder {tmp_path} is not writable "
                                         r"\(Read-only file system\)"):  # fmt: skip
        check_outputs([tmp_path / "new" / "out.json"], overwrite=False)


def test_written_whole_with_the_users_umask(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "out.txt"
    previous = os.umask(0o027)
    try:
        write_atomically(path, lambda temporary: temporary.write_text("done"), overwrite=False)
    finally:
        os.umask(previous)
    assert path.read_text() == "done"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # not mkstemp's 0600

    def fail(temporary: Path) -> None:
        temporary.write_text("half")
        raise RuntimeError("the writer failed")

    with pytest.raises(RuntimeError):
        write_atomically(path, fail, overwrite=True)
    assert path.read_text() == "done" and sorted(p.name for p in path.parent.iterdir()) == ["out.txt"]


def test_metrics_that_could_not_be_computed_are_null_in_strict_json() -> None:
    import json

    def refuse(constant: str):
        raise ValueError(f"not JSON: {constant}")

    text = metrics_json({"psnr": 31.5, "p95_abs_difference_sigma": float("nan"), "ratio": float("inf")})
    assert json.loads(text, parse_constant=refuse) == {"psnr": 31.5, "p95_abs_difference_sigma": None, "ratio": None}
