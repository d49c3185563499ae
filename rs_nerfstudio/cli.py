"""Running an ``rs-*`` command's work so that what a user can cause or meet ends in one line, not a traceback.

Bad input is an :class:`~rs_nerfstudio.validation.InputError`, raised by the checks before the work. This module
catches what the checks cannot foresee: Ctrl+C, running out of memory, and a file system that refuses a read or a
write. The files of rs-export, rs-eval-geometry, rs-certify and rs-scene are written whole or not at all
(:func:`rs_nerfstudio.outputs.write_atomically`, rs-scene's staging folder), so none of these leaves one half-written;
rs-demo's run folder holds nerfstudio's checkpoints, which nerfstudio writes.
"""

from __future__ import annotations

import sys
import warnings
from typing import Callable

from rs_nerfstudio.runs import one_line

OUT_OF_MEMORY = ("can't allocate memory", "out of memory")
"""What torch's CPU and CUDA allocators say when a request fails (numpy raises MemoryError)."""


def run_command(name: str, work: Callable[[], object], sizes: str) -> None:
    """Run ``work`` for the command ``name``; ``sizes`` names the flags that set how much memory it takes."""
    # nerfstudio's camera code, imported when a run's config.yml is read, warns of this before every command's output.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    try:
        work()
    except KeyboardInterrupt:
        print(f"\n{name}: stopped by Ctrl+C", file=sys.stderr)
        raise SystemExit(130) from None
    except (MemoryError, RuntimeError) as error:
        if isinstance(error, RuntimeError) and not any(words in str(error) for words in OUT_OF_MEMORY):
            raise
        raise SystemExit(f"{name}: error: out of memory; lower {sizes}") from None
    except OSError as error:
        raise SystemExit(f"{name}: error: {one_line(error)}") from None
