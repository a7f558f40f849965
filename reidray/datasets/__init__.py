"""Datasets: each release's layout parsed into one manifest table (see manifest.SCHEMA).

One module per dataset holds all of that dataset's layout rules (and its synthetic writer);
`registry` lists them and finds them under a data root; `summary` reports what was found.
"""

from reidray.datasets import custom, synth
from reidray.datasets.registry import discover, get, load, names
from reidray.datasets.spec import Counts, DatasetSpec
from reidray.datasets.summary import summarize, summary_lines

__all__ = ["Counts", "custom", "DatasetSpec", "discover", "get", "load", "names", "summarize", "summary_lines", "synth"]
