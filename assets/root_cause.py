"""The one line a user sees for a failed step or run: the root cause, not Dagster's wrapper.

Dagster records a step failure as `DagsterExecutionStepExecutionError: Error occurred while executing
op "x"` whose `cause` chain holds what really happened (e.g. `OSError: [Errno 28] No space left on
device: '<file>'`). `failure_line` walks that chain (explicit causes, else implicit contexts), skips
Dagster's own wrappers and reports the innermost error, with the outermost user-level message after
it when that one says something else (`... (reported as DatasetError: snapshot of products failed)`).
A `dg.Failure` speaks through its description. Works on Dagster's serialized errors and on live
Python exceptions alike.
"""

from __future__ import annotations

from typing import Any

MAX_CHARS = 400


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")


def _links(err: Any) -> list[tuple[str, str]]:
    """(class name, first line of 'Class: message') from the outermost error to the innermost."""
    out: list[tuple[str, str]] = []
    seen: set[int] = set()
    while err is not None and id(err) not in seen and len(out) < 20:
        seen.add(id(err))
        if isinstance(err, BaseException):
            name = type(err).__name__
            text = f"{name}: {err}" if str(err) else name
            nxt = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
        else:  # dagster's SerializableErrorInfo: message is already "module.Class: message"
            name = str(getattr(err, "cls_name", "") or "")
            text = str(getattr(err, "message", "") or name)
            nxt = getattr(err, "cause", None) or getattr(err, "context", None)
        line = _first_line(text)
        if line.startswith("dagster.") and ": " in line:  # "dagster._core...Failure: x" -> "Failure: x"
            line = f"{name}: {line.split(': ', 1)[1]}"
        out.append((name, line))
        err = nxt
    return out


def _framework(name: str) -> bool:
    return name.startswith("Dagster")


def error_line(err: Any, description: str | None = None) -> str:
    """One line naming the root cause of `err` (module docstring); `description` (a dg.Failure's)
    stands for the outermost user-level message."""
    user = [line for name, line in _links(err) if not _framework(name) and line]
    if description:
        user = [_first_line(description)] + [ln for ln in user if not ln.startswith("Failure: ")]
    if not user:
        links = _links(err)
        return (links[-1][1] if links else "failed")[:MAX_CHARS]
    root, outer = user[-1], user[0]
    if outer == root or root in outer:
        return outer[:MAX_CHARS]
    line = f"{root} (reported as {outer})"
    return line if len(line) <= MAX_CHARS else root[:MAX_CHARS]


def step_failure_line(data: Any) -> str:
    """The line for a Dagster `StepFailureData` (event.step_failure_data)."""
    if data is None:
        return "step failed"
    if str(getattr(data, "error_source", "")).endswith("INTERRUPT"):
        return "interrupted"
    desc = data.user_failure_data.description if data.user_failure_data else None
    if data.error is None:
        return _first_line(desc or "step failed")[:MAX_CHARS]
    return error_line(data.error, desc)
