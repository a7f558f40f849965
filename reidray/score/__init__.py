"""Scoring: exact metric kernels (``metrics``) and the evaluation protocol of each dataset
(``protocols``). ``evaluate`` scores one query set against one gallery from features;
``evaluate_distances`` does the same from a distance matrix computed elsewhere."""

from reidray.score.metrics import evaluate, evaluate_distances

__all__ = ["evaluate", "evaluate_distances"]
