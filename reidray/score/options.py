"""``evaluate``'s post-processing keywords (``rerank=``, ``aqe=``) as checked option records."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


def parse_options(cls: type[T], options: Mapping[str, Any], what: str, counts: tuple[str, ...]) -> T:
    """``cls`` (a dataclass of defaults) from ``options``: unknown keys are errors, and each field
    named in ``counts`` must be an integer >= 1; ``what`` names the post-processing in messages."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise ValueError(f"unknown {what} option(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    parsed = cls(**options)
    for name in counts:
        value = getattr(parsed, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{what} {name} must be an integer >= 1, got {value!r}")
    return parsed
