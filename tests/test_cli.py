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


def test_the_commands_answer_help_without_importing_torch() -> None:
    """`--help` and a mistyped flag are answered before any work: the rs-* commands' modules import torch (~1.4 s
    here) only where they use it. rs-scene's `--help` took 2.7 s, rs-export's and rs-certify's 1.7 s; now 0.3 s."""
    import subprocess
    import sys

    modules = ("rs_nerfstudio.scenes", "rs_nerfstudio.export", "rs_nerfstudio.certify", "rs_nerfstudio.demo",
               "rs_nerfstudio.geometry")  # fmt: skip
    script = f"import sys\nfor name in {modules!r}:\n    __import__(name)\nprint('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "False"
