"""Errors a user can act on.

Every stage raises a subclass of ``ReidrayError`` with a message that names the thing at fault
(the file, the model, the cell) and what to do about it; the CLI prints that message on one line
and exits with status 2, never a traceback.
"""

from __future__ import annotations

import errno
import re


class ReidrayError(Exception):
    """An error whose message is meant for the user."""


class UnknownNameError(ReidrayError):
    """A model, dataset or protocol name that is not registered."""

    def __init__(self, kind: str, name: str, valid: list[str]) -> None:
        self.kind, self.name, self.valid = kind, name, sorted(valid)
        super().__init__(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(self.valid)}")


class DatasetLayoutError(ReidrayError):
    """A dataset folder that is missing, incomplete or malformed."""


class WeightsNotFoundError(ReidrayError):
    """A model's weights are not on disk and cannot be downloaded."""


class ImageDecodeError(ReidrayError):
    """An image file that does not decode; the message names the file."""


class ImageTooLargeError(ImageDecodeError):
    """An image whose pixel count is past the limit (read from its header, before decoding)."""


class CellError(ReidrayError):
    """A (model, dataset) cell that cannot be embedded or scored; the message names the cell."""


_REMOTE_ERROR = re.compile(r"^reidray\.errors\.(\w+): (.+)$", re.MULTILINE)


def user_error(exc: BaseException) -> ReidrayError | None:
    """The reidray error a Ray failure wraps, if any.

    Ray chains a task's or actor's exception as ``cause``; Ray Data's ``UserCodeException`` keeps
    only the remote traceback's text, so the error's own line is read back from it, as its class.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        # Ray's task error subclasses its cause's class (its text: the remote traceback): look through it
        if isinstance(current, ReidrayError) and getattr(current, "cause", None) is None:
            return current
        found = _REMOTE_ERROR.findall(str(current))
        if found:
            name, message = found[-1]
            kind = globals().get(name)
            kind = kind if isinstance(kind, type) and issubclass(kind, ReidrayError) else ReidrayError
            error = kind.__new__(kind)
            Exception.__init__(error, message)  # whatever the class's own __init__ takes
            return error
        current = getattr(current, "cause", None) or current.__cause__ or current.__context__
    return None


def one_line(exc: BaseException) -> str:
    """An unexpected failure as one line for the user: the innermost cause's own last line (a Ray
    task error's text is the remote traceback), with the fix when the disk is full. The full
    trace stays in Ray's logs."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "cause", None) or exc.__cause__
        if not isinstance(inner, BaseException):
            break
        exc = inner
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)  # not the filename's repr
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[-1] if lines else type(exc).__name__
    if not line.startswith(type(exc).__name__):
        line = f"{type(exc).__name__}: {line}"
    if getattr(exc, "errno", None) == errno.ENOSPC or "No space left on device" in line:
        line += "; the disk is full: free space under the output root or pass --out on a larger disk"
    return line
