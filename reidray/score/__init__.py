"""Scoring: exact metric kernels (``metrics``) and the evaluation protocol of each dataset
(``protocols``). ``evaluate`` scores one query set against one gallery from features;
``evaluate_distances`` does the same from a distance matrix computed elsewhere.

Both are loaded on first use: the driver of ``python -m reidray.run score`` submits score tasks
through ``graph`` without importing torch; only the tasks rank.
"""

from typing import Any

__all__ = ["evaluate", "evaluate_distances"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from reidray.score import metrics

        return getattr(metrics, name)
    raise AttributeError(f"module 'reidray.score' has no attribute {name!r}")
