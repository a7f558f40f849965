"""``python -m reidray.run report``: every stored result as the paper shows it, in Markdown and HTML.

``build_report`` is pure (a results frame in, pages and PNGs out) so notebooks and tests can use
it without a store; ``write_report`` reads the store and writes under ``<out>/report/``:
``results.md``, ``results.html`` (self-contained: figures inlined), one PNG per figure drawn, and
``ranklists/<model>__<dataset>.png``, each cell's rank-list sheet (``report.ranklists``), linked
from both pages.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable
from dataclasses import dataclass, field

import polars as pl

from reidray.errors import ReidrayError
from reidray.report.figures import FigureOut, all_figures
from reidray.report.paper import PAPER_DATASETS, paper_models
from reidray.report.ranklists import SHEETS, write_sheets
from reidray.report.frame import METRICS, dataset_order, headline, labels, load_results, short
from reidray.report.tables import Table, comparison_table, metric_table, paradigm_table, postprocess_table
from reidray.store import Store

MARKDOWN = "results.md"
HTML = "results.html"
RANKLISTS_NOTE = ("Each cell's rank lists (plain features): its hardest queries by AP, then some at random "
                  "(seeded), each followed by its nearest gallery images, framed green (match), red (wrong "
                  "identity) or grey (removed by the protocol: junk, or the query's identity in its own camera).")

STYLE = """
body { font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; margin: 0 0 8px; } h2 { font-size: 17px; margin: 28px 0 8px; }
table.results { border-collapse: collapse; font-size: 13px; }
table.results th { background: #1f3b63; color: #fff; padding: 5px 9px; font-weight: 600; }
table.results td { border: 1px solid #c8c8c8; padding: 4px 9px; text-align: right; white-space: nowrap; }
table.results td:first-child, table.results td:nth-child(2) { text-align: left; }
td.best { background: #ffd966; } td.second { background: #fff2cc; }
td.agree { background: #d9ead3; } td.differ { background: #f4cccc; }
span.detail { font-size: 11px; color: #555; }
tr.random-init td { color: #888; font-style: italic; }
p.note, p.summary, figcaption { font-size: 12.5px; color: #555; max-width: 90em; }
figure { margin: 16px 0 28px; } figure img { max-width: 100%; border: 1px solid #eee; }
"""


@dataclass
class Report:
    """The report's parts; ``markdown`` and ``html`` lay them out as pages."""

    summary: list[str]
    tables: list[Table]
    figures: list[FigureOut]
    ranklists: list[tuple[str, str]] = field(default_factory=list)  # (cell label, sheet path relative to the page)

    @property
    def main_table(self) -> Table:
        return self.tables[0]

    def markdown(self) -> str:
        parts = ["# reidray results", "", *[line for s in self.summary for line in (s, "")]]
        parts += [t.markdown() for t in self.tables]
        parts += ["## Figures", ""]
        for f in self.figures:
            parts += [f"### {f.title}", ""]
            if f.png is not None:
                parts += [f"![{f.title}]({f.key}.png)", ""]
            parts += [line for text in (f.caption, f.note) if text for line in (text, "")]
        if self.ranklists:
            parts += ["## Rank lists", "", RANKLISTS_NOTE, ""]
            parts += [f"- [{label}]({path})" for label, path in self.ranklists] + [""]
        return "\n".join(parts)

    def html(self) -> str:
        body = ["<h1>reidray results</h1>", *[f'<p class="summary">{html.escape(s)}</p>' for s in self.summary]]
        body += [t.html() for t in self.tables]
        body.append('<section id="figures"><h2>Figures</h2>')
        for f in self.figures:
            body.append(f'<figure id="{f.key}"><h3>{html.escape(f.title)}</h3>')
            if f.png is not None:
                data = base64.b64encode(f.png).decode()
                body.append(f'<img alt="{html.escape(f.title)}" src="data:image/png;base64,{data}">')
            caption = " ".join(text for text in (f.caption, f.note) if text)
            body.append(f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        body.append("</section>")
        if self.ranklists:
            links = "".join(f'<li><a href="{html.escape(path)}">{html.escape(label)}</a></li>'
                            for label, path in self.ranklists)
            body.append(f'<section id="ranklists"><h2>Rank lists</h2><p class="note">{html.escape(RANKLISTS_NOTE)}'
                        f"</p><ul>{links}</ul></section>")
        return (
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>reidray results</title>'
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n"
        )


def count(n: int, noun: str) -> str:
    """``1 cell``, ``2 cells``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def build_report(results: pl.DataFrame, source: str = "", stale: list[str] | None = None,
                 ranklists: list[tuple[str, str]] | None = None) -> Report:
    """Tables and figures from a results frame (the results schema; any subset of the grid);
    ``stale`` lists the results files left out, and why; ``ranklists`` the sheets to link."""
    results = results.with_columns(pl.col(m).fill_nan(None) for m in METRICS)
    head = headline(results)
    datasets = dataset_order(head)
    summary = [
        f"{count(head.height, 'cell')}: {count(len(labels(head)), 'model')} x {count(len(datasets), 'dataset')} "
        f"({', '.join(short(d) for d in datasets)})" + (f", from {source}" if source else "") + ". "
        "Metrics in percent; fractions in the results files."
    ]
    random_labels = sorted(set(head.filter(pl.col("random_init"))["label"].to_list()))
    if random_labels:
        summary.append(
            f"Random-initialised weights (not results, never compared with the paper): {', '.join(random_labels)}."
        )
    beyond = _beyond_the_paper(head, datasets)
    if beyond:
        summary.append(beyond)
    if stale:
        summary.append(f"Left out, not current ({len(stale)}): " + " ".join(f"{line}." for line in stale))
    tables = [metric_table(head, "mAP"), metric_table(head, "rank1"), paradigm_table(head), comparison_table(head)]
    post = postprocess_table(head, {name: headline(results, name) for name in ("rerank", "aqe")})
    return Report(summary, tables + ([post] if post else []), all_figures(head), list(ranklists or []))


def _beyond_the_paper(head: pl.DataFrame, datasets: list[str]) -> str:
    """The models and datasets the paper has no figure for (your own encoders and data among them):
    first-class rows everywhere, but never compared with the paper."""
    models = [m for m in dict.fromkeys(head["model"].to_list()) if m not in set(paper_models())]
    others = [d for d in datasets if d not in PAPER_DATASETS]
    parts = ([f"models {', '.join(models)}"] if models else []) + ([f"datasets {', '.join(others)}"] if others else [])
    if not parts:
        return ""
    return (f"Not in the paper, so evaluated alike and never compared with it: {'; '.join(parts)}. "
            "Encoders by reference (timm:, open_clip:, hf:, torchreid:, python:) are paradigm custom unless they name one.")


def write_report(store: Store, say: Callable[[str], None], missing_ok: bool = False) -> str:
    """Read every current results file, write the report under ``store.report_dir()``, print the
    mAP table and return it. Without current results an earlier report is removed (it would show
    numbers that are no longer current) and a ReidrayError raised, or, with ``missing_ok``, a line said."""
    directory = store.report_dir()
    try:
        results, stale = load_results(store)
    except ReidrayError as exc:
        for path in [*store.list_files(directory, ""), *store.list_files(f"{directory}/{SHEETS}", "")]:
            store.delete(path)
        if not missing_ok:
            raise
        say(f"no report: {exc}")
        return ""
    for line in stale:
        say(f"left out of the report: {line}")
    sheets = write_sheets(store, results, say)
    report = build_report(results, source=store.uri("results"), stale=stale, ranklists=sheets)
    store.write_bytes(f"{directory}/{MARKDOWN}", report.markdown().encode())
    store.write_bytes(f"{directory}/{HTML}", report.html().encode())
    for figure in report.figures:
        path = f"{directory}/{figure.key}.png"
        if figure.png is not None:
            store.write_bytes(path, figure.png)
        elif store.exists(path):  # an earlier run's figure would no longer match these results
            store.fs.delete_file(path)
    main = report.main_table.markdown()
    say(main)
    drawn = sum(f.png is not None for f in report.figures)
    say(f"report written to {store.uri('report', MARKDOWN)} and {HTML} beside it, with {drawn} of "
        f"{len(report.figures)} figures")
    for figure in report.figures:
        if figure.png is None:
            say(f"{figure.title}: {figure.note}")
    if sheets:
        say(f"rank lists: {len(sheets)} sheet(s) under {store.uri('report', SHEETS)}")
    return main
