"""The report's tables: Table 2 of the paper (mAP) and its rank-1 twin, a per-paradigm summary, and
reidray against the paper cell by cell. Each is built once as a ``Table`` and rendered to both
Markdown and HTML, so the two pages can never disagree.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import polars as pl

from reidray.report import paper
from reidray.report.frame import (
    IN_THE_WILD, PARADIGMS, SURVEILLANCE, TRAINING_DOMAIN, common_datasets, dataset_order, group_mean, labels, short,
)  # fmt: skip

MISSING = "–"
METRIC_NAMES = {"mAP": "mAP", "rank1": "rank-1"}


@dataclass(frozen=True)
class Cell:
    """One table cell; ``style`` is best | second (emphasised in both renderings) or agree | differ
    (coloured in HTML only)."""

    text: str
    style: str = ""
    detail: str = ""  # secondary text: after a space in Markdown, on its own line in HTML


@dataclass
class Table:
    """A titled table with notes under it; ``row_styles`` marks rows (``random-init``)."""

    key: str
    title: str
    header: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    row_styles: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"## {self.title}", ""]
        if self.rows:
            lines += ["| " + " | ".join(self.header) + " |", "|" + "|".join("---" for _ in self.header) + "|"]
            lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in self.rows]
            lines.append("")
        lines += [line for note in self.notes for line in (note, "")]
        return "\n".join(lines)

    def html(self) -> str:
        parts = [f'<section id="{self.key}"><h2>{html.escape(self.title)}</h2>']
        if self.rows:
            parts.append('<table class="results"><thead><tr>')
            parts += [f"<th>{html.escape(h)}</th>" for h in self.header]
            parts.append("</tr></thead><tbody>")
            for row, style in zip(self.rows, self.row_styles or [""] * len(self.rows)):
                parts.append(f'<tr class="{style}">' if style else "<tr>")
                parts += [_html_cell(c) for c in row]
                parts.append("</tr>")
            parts.append("</tbody></table>")
        parts += [f'<p class="note">{html.escape(note)}</p>' for note in self.notes]
        parts.append("</section>")
        return "".join(parts)


def _md(cell: Cell) -> str:
    text = {"best": f"**{cell.text}**", "second": f"<u>{cell.text}</u>"}.get(cell.style, cell.text)
    return f"{text} {cell.detail}" if cell.detail else text


def _html_cell(cell: Cell) -> str:
    text = html.escape(cell.text)
    if cell.style == "best":
        text = f"<b>{text}</b>"
    elif cell.style == "second":
        text = f"<u>{text}</u>"
    if cell.detail:
        text += f'<br><span class="detail">{html.escape(cell.detail)}</span>'
    return f'<td class="{cell.style}">{text}</td>' if cell.style else f"<td>{text}</td>"


def pct(value: float | None) -> str:
    """A fraction as the paper prints it: percent, two decimals."""
    return MISSING if value is None else f"{value * 100:.2f}"


def ranks(values: dict[str, float | None], eligible: set[str]) -> dict[str, str]:
    """best / second per label among ``eligible`` labels, on the printed (rounded) values so that
    printed ties share a mark."""
    shown = {label: round(v * 100, 2) for label, v in values.items() if v is not None and label in eligible}
    distinct = sorted(set(shown.values()), reverse=True)
    style = {distinct[0]: "best"} if distinct else {}
    if len(distinct) > 1:
        style[distinct[1]] = "second"
    return {label: style[v] for label, v in shown.items() if v in style}


def metric_table(head: pl.DataFrame, metric: str) -> Table:
    """Models as rows, datasets as columns, ``metric`` in percent; best bold, second underlined."""
    name = METRIC_NAMES[metric]
    datasets = dataset_order(head)
    order = labels(head)
    info = {r["label"]: r for r in head.unique("label", keep="first").iter_rows(named=True)}
    value = {(r["label"], r["dataset"]): r[metric] for r in head.iter_rows(named=True)}
    trained = {label for label in order if not info[label]["random_init"]}
    marks = {d: ranks({label: value.get((label, d)) for label in order}, trained) for d in datasets}
    table = Table(
        key=f"table-{metric.lower()}",
        title=f"{name} (%) per model and dataset",
        header=["model", "paradigm", "params (M)", *[short(d) for d in datasets]],
    )
    for label in order:
        params = info[label]["params"]
        cells = [Cell(label), Cell(info[label]["paradigm"]), Cell(MISSING if params is None else f"{params:.1f}")]
        cells += [Cell(pct(value.get((label, d))), marks[d].get(label, "")) for d in datasets]
        table.rows.append(cells)
        table.row_styles.append("" if label in trained else "random-init")
    table.notes.append(
        f"Bold: best {name} per dataset; underlined: second best. params: the vision tower reidray runs "
        f"(Table 1 of the paper counts whole modules). {MISSING}: not evaluated."
    )
    if head.filter((pl.col("dataset") == "grid") & pl.col("aggregate")).height:
        table.notes.append("GRID: the mean over its 10 released trials (the study scored trial 0 only).")
    if len(trained) < len(order):
        table.notes.append(
            "Rows marked (random-init) ran with random weights: their numbers are not results, "
            "are never ranked and are never compared with the paper."
        )
    return table


POSTPROCESS_NAMES = {"rerank": "re-ranked", "aqe": "AQE"}


def postprocess_table(plain: pl.DataFrame, post: dict[str, pl.DataFrame]) -> Table | None:
    """mAP of each cell as scored, re-ranked and query-expanded (``post``: headline frames per
    post-processing), with the change in points; None when no cell was post-processed."""
    post = {name: frame for name, frame in post.items() if not frame.is_empty()}
    if not post:
        return None
    value = {(name, r["label"], r["dataset"]): r["mAP"] for name, f in post.items() for r in f.iter_rows(named=True)}
    table = Table(
        key="table-postprocess",
        title="Post-processing: mAP (%) plain and after re-ranking / query expansion",
        header=["model", "dataset", "plain", *[POSTPROCESS_NAMES.get(name, name) for name in post]],
    )
    for r in plain.iter_rows(named=True):
        after = {name: value.get((name, r["label"], r["dataset"])) for name in post}
        if all(v is None for v in after.values()):
            continue
        cells = [Cell(r["label"]), Cell(short(r["dataset"])), Cell(pct(r["mAP"]))]
        for v in after.values():
            change = None if v is None or r["mAP"] is None else f"({(v - r['mAP']) * 100:+.2f})"
            cells.append(Cell(pct(v), detail=change or ""))
        table.rows.append(cells)
        table.row_styles.append("random-init" if r["random_init"] else "")
    table.notes.append(
        "Re-ranked: k-reciprocal re-ranking (Zhong et al., CVPR 2017; torchreid's re_ranking numbers). AQE: "
        "average query expansion (fast-reid's aqe). In brackets: the change from plain, in points. The "
        f"tables and figures above use the plain rows only. {MISSING}: not post-processed."
    )
    return table


def paradigm_table(head: pl.DataFrame) -> Table:
    """Per paradigm: its best model overall and on each dataset type (trained weights only)."""
    trained = head.filter(~pl.col("random_init"))
    common = common_datasets(trained)
    types = {
        "MSMT17": (TRAINING_DOMAIN,),
        "surveillance": SURVEILLANCE,
        "in-the-wild": IN_THE_WILD,
    }
    table = Table(
        key="table-paradigms",
        title="Per paradigm: the best model's mAP (%)",
        header=["paradigm", "models", f"mean over {len(common)} common datasets", *types],
    )
    overall = trained.filter(pl.col("dataset").is_in(common)).group_by("label", "paradigm").agg(pl.col("mAP").mean())
    by_type = {name: group_mean(trained, members) for name, members in types.items()}
    present = trained["paradigm"].unique().to_list()
    for paradigm in [p for p in PARADIGMS if p in present] + sorted(set(present) - set(PARADIGMS)):
        members = trained.filter(pl.col("paradigm") == paradigm)["label"].unique().sort().to_list()
        cells = [Cell(paradigm), Cell(", ".join(members))]
        cells.append(_best(overall.filter(pl.col("paradigm") == paradigm)))
        cells += [_best(frame.filter(pl.col("paradigm") == paradigm)) for frame in by_type.values()]
        table.rows.append(cells)
    table.notes.append(
        "Each cell: the paradigm's best model there, by mAP. Mean: over the datasets every trained model has "
        f"({', '.join(short(d) for d in common) or 'none'}). Surveillance: mean of MSMT17, Market, Duke and "
        "CUHK03; in-the-wild: mean of LaST and Celeb-reID (the paper's Figure 1 groups); a model counts for a "
        f"group only with all of its datasets. MSMT17 is the supervised models' training set. {MISSING}: no "
        "model of the paradigm has the datasets. Random-init rows are left out."
    )
    paradigm_of = dict(trained.select("model", "paradigm").unique().iter_rows())  # reidray's, from its rows
    differs = [
        f"{r['model']} (paper: {r['paper_paradigm']})"
        for r in paper.paper_table().iter_rows(named=True)
        if r["model"] in paradigm_of and r["paper_paradigm"].lower() != paradigm_of[r["model"]]
    ]
    if differs:
        table.notes.append(f"Paradigms are reidray's; the paper's Table 1 puts differently: {', '.join(differs)}.")
    return table


def _best(frame: pl.DataFrame) -> Cell:
    if frame.is_empty():
        return Cell(MISSING)
    top = frame.sort("mAP", descending=True).row(0, named=True)
    return Cell(pct(top["mAP"]), detail=f"({top['label']})")


def comparison_table(head: pl.DataFrame) -> Table:
    """reidray against the paper's Table 2, cell by cell, each cell tagged with its known causes."""
    cells = paper.compare(head)
    table = Table(key="table-paper", title="reidray against the paper's Table 2 (mAP %)", header=[])
    not_compared = sorted(set(head.filter(pl.col("random_init"))["label"].to_list()))
    if cells.is_empty():
        table.notes.append(f"No result here is a cell of the paper's Table 2 ({paper.SOURCE}), so nothing is compared.")
        _not_compared_note(table, not_compared)
        return table
    known = [c for c in paper.causes(head) if any(c.key in keys for keys in cells["causes"].to_list())]
    number = {c.key: i + 1 for i, c in enumerate(known)}
    datasets = [d for d in dataset_order(cells) if d in set(cells["dataset"].to_list())]
    by_cell = {(r["model"], r["dataset"]): r for r in cells.iter_rows(named=True)}
    models = [m for m in paper.paper_models() if m in set(cells["model"].to_list())]
    names = dict(zip(cells["model"].to_list(), cells["paper_model"].to_list()))
    table.header = ["model (paper's name)", *[short(d) for d in datasets]]
    for model in models:
        row = [Cell(f"{model} ({names[model]})")]
        for d in datasets:
            r = by_cell.get((model, d))
            if r is None:
                row.append(Cell(MISSING))
                continue
            tags = ",".join(str(number[k]) for k in r["causes"])
            detail = f"({round(r['delta'], 2) + 0.0:+.2f})" + (f" [{tags}]" if tags else "")
            row.append(Cell(f"{r['mAP']:.2f} / {r['paper_mAP']:.2f}", "agree" if r["agrees"] else "differ", detail))
        table.rows.append(row)
    n_agree = int(cells["agrees"].sum())
    table.notes.append(
        f"Each cell: reidray / paper (reidray minus paper, in points) [known causes]. {n_agree} of {cells.height} "
        f"cells agree within {paper.AGREE_PP:g} point. Paper: {paper.SOURCE}; the paper reports mAP only."
    )
    unexplained = cells.filter(~pl.col("agrees") & (pl.col("causes").list.len() == 0))
    if unexplained.height:
        listed = "; ".join(
            f"{r['model']} on {short(r['dataset'])} ({r['delta']:+.2f})" for r in unexplained.iter_rows(named=True)
        )
        table.notes.append(f"Differences with no known cause (worth a look): {listed}.")
    else:
        table.notes.append(
            "Every cell that differs by more than a point has a known cause listed below; a cause says why a "
            "difference is expected, not how large it should be."
        )
    table.notes += [f"[{number[c.key]}] {c.title}. {c.text}" for c in known]
    missing = sorted(set(paper.paper_table()["model"].to_list()) - set(models))
    if missing:
        table.notes.append(f"Models of the paper without reidray results here: {', '.join(missing)}.")
    _not_compared_note(table, not_compared)
    return table


def _not_compared_note(table: Table, labels_: list[str]) -> None:
    if labels_:
        table.notes.append(f"Not compared (random weights, not results): {', '.join(labels_)}.")
