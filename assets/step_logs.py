"""Step stdout/stderr capture for the launcher's own runs, without Dagster's `tail` processes.

Dagster's `LocalComputeLogManager` captures each step's stdout and stderr into files the UI shows
(Logs tab, "stdout"/"stderr") and mirrors them to the console by starting two `tail -F` processes per
step and stopping them after it (~20 ms of process start-up and waiting per step: 0.35 s of a
16-step launch on the eval bench). The launcher's console shows its own progress bar and summary
(Dagster's console logger is set to CRITICAL there), so the mirror adds nothing: `capture_to_files`
keeps the capture into the same files, in the same places, and drops the mirror. Applied only to the
instance the launcher opened itself, in this process; the UI and a daemon keep Dagster's own manager.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence

import dagster as dg


def capture_to_files(instance: dg.DagsterInstance) -> bool:
    """Make `instance`'s local compute-log manager capture without mirroring (module docstring);
    False (nothing changed) for any other manager or when Dagster's names moved."""
    try:
        from dagster._core.execution.compute_logs import redirect_to_file
        from dagster._core.storage.compute_log_manager import CapturedLogContext, ComputeIOType
        from dagster._core.storage.local_compute_log_manager import IO_TYPE_EXTENSION, LocalComputeLogManager
        from dagster._utils import ensure_file, touch_file
    except ImportError:
        return False
    manager = instance.compute_log_manager
    if type(manager) is not LocalComputeLogManager or not hasattr(manager, "get_captured_local_path"):
        return False

    @contextlib.contextmanager
    def capture_logs(log_key: Sequence[str]) -> Iterator[CapturedLogContext]:
        out = manager.get_captured_local_path(log_key, IO_TYPE_EXTENSION[ComputeIOType.STDOUT])
        err = manager.get_captured_local_path(log_key, IO_TYPE_EXTENSION[ComputeIOType.STDERR])
        ensure_file(out)
        ensure_file(err)
        with redirect_to_file(sys.stdout, out), redirect_to_file(sys.stderr, err):
            yield CapturedLogContext(log_key)
        touch_file(manager.complete_artifact_path(log_key))  # as Dagster's: the capture is complete

    manager.capture_logs = capture_logs
    return True
