"""What the rs-* commands' work meets that no check foresees ends in one line: Ctrl+C, memory, the file system."""

from __future__ import annotations

import pytest

from rs_nerfstudio.cli import run_command


def failing(error: BaseException):
    def work() -> None:
        raise error

    return work


@pytest.mark.parametrize(
    "error, code",
    [
        (KeyboardInterrupt(), 130),
        (MemoryError(), "rs-x: error: out of memory; lower --resolution"),
        (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to "
                      "allocate 160000000000 bytes."), "rs-x: error: out of memory; lower --resolution"),
        (PermissionError(1, "Operation not permitted", "/data/out/mesh.ply"),
         "rs-x: error: [Errno 1] Operation not permitted: '/data/out/mesh.ply'"),
    ],
)  # fmt: skip
def test_failures_end_in_one_line(error: BaseException, code, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_command("rs-x", failing(error), "--resolution")
    assert exit_info.value.code == code
    if code == 130:
        assert capsys.readouterr().err.strip() == "rs-x: stopped by Ctrl+C"


def test_other_errors_are_not_hidden() -> None:
    with pytest.raises(RuntimeError, match="a defect"):
        run_command("rs-x", failing(RuntimeError("a defect")), "--resolution")
    run_command("rs-x", lambda: None, "--resolution")
