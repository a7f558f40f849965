"""Errors a user can act on.

Every stage raises a subclass of ``ReidrayError`` with a message that names the thing at fault
(the file, the model, the cell) and what to do about it; the CLI prints that message on one line
and exits with status 2, never a traceback.
"""


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


class CellError(ReidrayError):
    """A (model, dataset) cell that cannot be embedded or scored; the message names the cell."""
