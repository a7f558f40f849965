"""Results as people read them: the paper's tables and figures, and reidray against the paper.

``build.write_report`` is the entry point (the ``report`` command); ``build.build_report`` does
the same from a Polars frame without touching the store. ``frame`` picks one headline row per
cell, ``tables`` and ``figures`` lay them out, ``paper`` holds the published Table 2 and the
known causes of differences from it.
"""
