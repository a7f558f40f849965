"""reidray: evaluate person re-identification encoders across ReID datasets, on Ray."""

__version__ = "0.1.0"
