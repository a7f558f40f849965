"""Scoring: exact metric kernels (``metrics``) and the evaluation protocol of each dataset
(``protocols``). ``evaluate`` is the public entry point for one query set against one gallery."""

from reidray.score.metrics import evaluate

__all__ = ["evaluate"]
