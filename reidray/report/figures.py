"""The paper's four figures as PNG, drawn from whatever results there are.

A figure needs certain datasets (Figure 1 the surveillance and in-the-wild groups, Figure 2
MSMT17); when the results lack them the figure is not drawn and ``FigureOut.note`` says why, so
a partial grid yields a partial report, never a crash. Matplotlib is used through ``Figure``
objects, not pyplot: no global state and no display backend, safe inside a Ray worker.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import polars as pl
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from reidray.report.frame import (
    IN_THE_WILD, PARADIGMS, SURVEILLANCE, TRAINING_DOMAIN, common_datasets, dataset_order, group_mean, labels, short,
)  # fmt: skip

RETENTION_FLOOR = 0.01  # below 1% mAP on MSMT17, a ratio to it is noise
PARADIGM_STYLE = {
    "supervised": ("#1f77b4", "o"),
    "language-aligned": ("#d62728", "s"),
    "self-supervised": ("#2ca02c", "^"),
    "hand-crafted": ("#7f7f7f", "D"),
    "control": ("#000000", "X"),
    "custom": ("#ff7f0e", "*"),
}
OTHER_STYLE = ("#9467bd", "P")
SIZE_TICKS = (0, 1, 10, 100, 1000)
GROUPS = f"Surveillance = mean of {', '.join(short(d) for d in SURVEILLANCE)}; in-the-wild = mean of " + " and ".join(
    short(d) for d in IN_THE_WILD
)


@dataclass(frozen=True)
class FigureOut:
    """One figure: its PNG, or None and the reason in ``note``; ``note`` may also say what was left out."""

    key: str
    title: str
    caption: str
    png: bytes | None
    note: str = ""


def all_figures(head: pl.DataFrame) -> list[FigureOut]:
    return [cross_domain(head), retention(head), paradigm_best(head), size_vs_map(head)]


def cross_domain(head: pl.DataFrame) -> FigureOut:
    """Figure 1: each model's mean mAP on surveillance datasets against in-the-wild ones."""
    key, title = "fig1_cross_domain", "Figure 1. Cross-domain degradation"
    caption = f"mAP (%) per model. {GROUPS}; a model needs all of a group's datasets to have its bar."
    surveillance = _by_label(group_mean(head, SURVEILLANCE))
    wild = _by_label(group_mean(head, IN_THE_WILD))
    models = [m for m in labels(head) if m in surveillance or m in wild]
    if not models:
        groups = " or ".join(", ".join(short(d) for d in g) for g in (SURVEILLANCE, IN_THE_WILD))
        return FigureOut(key, title, caption, None, f"Not drawn: no model has all of {groups}.")
    fig, ax = _figure(len(models))
    width = 0.38
    for offset, values, name, colour in (
        (-width / 2, surveillance, "Surveillance", "#1f77b4"),
        (width / 2, wild, "In-the-wild", "#ff7f0e"),
    ):
        heights = [values.get(m, math.nan) * 100 for m in models]
        bars = ax.bar([i + offset for i in range(len(models))], heights, width, label=name, color=colour)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    _model_axis(ax, models)
    ax.set_ylabel("mAP (%)")
    ax.set_title(title)
    ax.legend(frameon=False)
    partial = [m for m in models if not (m in surveillance and m in wild)]
    note = f"Missing a group (no bar): {', '.join(partial)}." if partial else ""
    return FigureOut(key, title, caption, _png(fig), note)


def retention(head: pl.DataFrame) -> FigureOut:
    """Figure 2: mAP on each dataset as a percentage of the same model's MSMT17 mAP."""
    key, title = "fig2_retention", "Figure 2. Retention relative to MSMT17"
    caption = (
        "Retention = dataset mAP / MSMT17 mAP x 100, per model (MSMT17: the supervised models' training set); "
        f"100% = as good as on MSMT17. Models under {RETENTION_FLOOR:.0%} MSMT17 mAP are left out: a ratio to a "
        "near-chance score is noise."
    )
    base = _by_label(head.filter(pl.col("dataset") == TRAINING_DOMAIN))
    if not base:
        return FigureOut(key, title, caption, None, "Not drawn: no MSMT17 results (retention is relative to them).")
    models = [m for m in labels(head) if base.get(m, 0.0) >= RETENTION_FLOOR]
    others = [d for d in dataset_order(head) if d != TRAINING_DOMAIN]
    if not models or not others:
        why = f"no model reaches {RETENTION_FLOOR:.0%} mAP on MSMT17" if not models else "no dataset besides MSMT17"
        return FigureOut(key, title, caption, None, f"Not drawn: {why}.")
    value = {(r["label"], r["dataset"]): r["mAP"] for r in head.iter_rows(named=True)}
    fig, ax = _figure(len(others), per_item=0.35 * len(models) + 0.4)
    width = 0.8 / len(models)
    palette = _palette(len(models))
    for j, model in enumerate(models):
        heights = [value.get((model, d), math.nan) / base[model] * 100 for d in others]
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(others))]
        ax.bar(xs, heights, width, label=model, color=palette[j])
    ax.axhline(100, color="black", linestyle="--", linewidth=1, label="MSMT17 level")
    ax.set_yscale("log")  # a ratio: halving and doubling are the same distance from 100%
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ratios = [v for m in models for d in others if (v := value.get((m, d), 0.0) / base[m] * 100) > 0] or [100.0]
    # a zero ratio (no match found at all) would stretch a log axis without end; room above for the legend
    ax.set_ylim(min(min(ratios), 100.0) / 1.5, max(max(ratios), 100.0) * 3)
    ax.set_xticks(range(len(others)), [short(d) for d in others])
    ax.set_ylabel("retention (% of MSMT17 mAP, log scale)")
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=7, ncol=2, loc="upper right")
    dropped = [m for m in labels(head) if m in base and m not in models]
    note = f"Under the floor, not drawn: {', '.join(dropped)}." if dropped else ""
    return FigureOut(key, title, caption, _png(fig), note)


def paradigm_best(head: pl.DataFrame) -> FigureOut:
    """Figure 3: the best model of each paradigm on MSMT17, surveillance and in-the-wild datasets."""
    key, title = "fig3_paradigms", "Figure 3. Best model per paradigm and dataset type"
    caption = f"mAP (%) of each paradigm's best model, named over its bar. {GROUPS}. Random-init rows are left out."
    trained = head.filter(~pl.col("random_init"))
    types = {"MSMT17 (training set)": (TRAINING_DOMAIN,), "Surveillance": SURVEILLANCE, "In-the-wild": IN_THE_WILD}
    best: dict[tuple[str, str], tuple[float, str]] = {}
    for name, members in types.items():
        for r in group_mean(trained, members).sort("mAP", descending=True).iter_rows(named=True):
            best.setdefault((name, r["paradigm"]), (r["mAP"], r["label"]))
    if not best:
        return FigureOut(key, title, caption, None, "Not drawn: no model has MSMT17 or all of a group's datasets.")
    present = {p for _, p in best}
    paradigms = [p for p in PARADIGMS if p in present] + sorted(present - set(PARADIGMS))
    fig, ax = _figure(len(types), per_item=0.5 * len(paradigms) + 0.8)
    width = 0.8 / len(paradigms)
    for j, paradigm in enumerate(paradigms):
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(types))]
        cells = [best.get((name, paradigm)) for name in types]
        bars = ax.bar(xs, [c[0] * 100 if c else math.nan for c in cells], width, label=paradigm,
                      color=PARADIGM_STYLE.get(paradigm, OTHER_STYLE)[0])
        ax.bar_label(bars, labels=[f"{c[1]}  {c[0] * 100:.1f}" if c else "" for c in cells], rotation=90,
                     fontsize=7, padding=3)
    ax.set_xticks(range(len(types)), list(types))
    ax.set_ylabel("mAP (%)")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.6)  # room for the names over the bars
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=8)
    missing = [name for name in types if not any((name, p) in best for p in paradigms)]
    note = f"No model has every dataset of: {', '.join(missing)}." if missing else ""
    return FigureOut(key, title, caption, _png(fig), note)


def size_vs_map(head: pl.DataFrame) -> FigureOut:
    """Figure 4: parameters against mean mAP, over the datasets every model has."""
    key, title = "fig4_size", "Figure 4. Model size against mean mAP"
    common = common_datasets(head)
    caption = (
        "Parameters: the vision tower reidray runs, millions, on a symmetric-log axis (hand-crafted and control "
        "models have none; the paper's Table 1 counts whole modules). Mean mAP over the datasets every model has: "
        f"{', '.join(short(d) for d in common) or 'none'}."
    )
    if not common:
        return FigureOut(key, title, caption, None, "Not drawn: no dataset was evaluated with every model.")
    means = (
        head.filter(pl.col("dataset").is_in(common))
        .group_by("label", "paradigm", maintain_order=True)
        .agg(pl.col("params").first(), pl.col("mAP").mean())
    )
    fig, ax = _figure(1, per_item=7.0)
    for paradigm, rows in means.group_by("paradigm", maintain_order=True):
        colour, marker = PARADIGM_STYLE.get(paradigm[0], OTHER_STYLE)
        ax.scatter(rows["params"], rows["mAP"] * 100, s=60, color=colour, marker=marker, label=paradigm[0])
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xticks(SIZE_TICKS, [f"{t:g}" for t in SIZE_TICKS])
    ax.set_xlim(-0.5, max(1000.0, means["params"].max() * 2))
    ax.set_xlabel("parameters (millions, vision tower)")
    ax.set_ylabel("mean mAP (%)")
    ax.set_title(title)
    # framed and titled: a bare marker-and-name entry would read as one more labelled model
    ax.legend(title="paradigm", fontsize=8, title_fontsize=8)
    points = [(r["label"], r["params"], r["mAP"] * 100) for r in means.iter_rows(named=True)]
    _label_points(fig, ax, points)
    return FigureOut(key, title, caption, _png(fig))


def _label_points(fig, ax, points: list[tuple[str, float, float]], size: float = 7.0) -> None:
    """Name each point, nudging a name up or down past names already placed (models of one size
    and score would otherwise print on top of each other); a moved name gets a leader line."""
    fig.draw_without_rendering()  # settle the layout, so data -> display transforms are final
    to_points = 72.0 / fig.dpi
    placed: list[tuple[float, float, float]] = []  # x, y, width of each name, in points
    step = size * 1.3
    for label, x, y in sorted(points, key=lambda p: -p[2]):
        px, py = (v * to_points for v in ax.transData.transform((x, y)))
        width = 0.6 * size * len(label)
        for shift in (0, 1, -1, 2, -2, 3, -3, 4, -4, 5, -5, 6, -6):
            ty = py + 3 + shift * step
            if not any(abs(ty - qy) < step and px < qx + qw and qx < px + width for qx, qy, qw in placed):
                break
        placed.append((px + 5, ty, width))
        line = {"arrowstyle": "-", "lw": 0.5, "color": "#999999"} if shift else None
        ax.annotate(label, (x, y), xytext=(5, ty - py), textcoords="offset points", fontsize=size,
                    va="bottom", arrowprops=line)


def _by_label(frame: pl.DataFrame) -> dict[str, float]:
    return {r["label"]: r["mAP"] for r in frame.iter_rows(named=True) if r["mAP"] is not None}


def _figure(n_items: int, per_item: float = 0.9):
    fig = Figure(figsize=(min(14.0, max(6.0, per_item * n_items + 2.0)), 4.8), layout="constrained")
    return fig, fig.subplots()


def _model_axis(ax, models: list[str]) -> None:
    ax.set_xticks(range(len(models)), models, rotation=30, ha="right", fontsize=8)


def _palette(n: int) -> list:
    cmap = colormaps["tab20" if n > 10 else "tab10"]
    return [cmap(i % cmap.N) for i in range(n)]


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=150)
    return buffer.getvalue()
