"""Altair charts across runs: the figures of the study's sweeps.

Every function takes a list of runs (``RunData``, or run folders) or a folder of runs, and
returns an Altair chart; one the runs cannot support raises ``PhasefitError`` saying what is
missing. ``sweep_charts`` returns those the runs support.

- ``scaling_chart``: plateau end t2 against N (log-log) with the fitted power law a * N^b and
  its 95% band, and the study's published fit 0.43 * N^0.81.
- ``alpha_chart``: plateau length and final accuracy against the power-law exponent alpha,
  one line per N, with the valley fitted near its floor and the alpha of the shortest plateau.
- ``warmup_chart``: final accuracy (or plateau length) over the warm-up grid (individuals x
  epochs), with uniform training at the same N as reference.
- ``finetune_chart``: accuracy of old (trained before) and new individuals while fine-tuning.
- ``known_chart``: facts known over time, per condition.

Fits are those of ``phasefit.crossrun`` (what ``phasefit detect`` prints), over complete
runs; runs still running or failed are drawn faded and left out of the fits. Where a
condition has two or more complete seeds, its error bar is its interval across seeds (at the
mean of its seeds, from crossrun's condition summary), else each run's own (one seed); the
chart's subtitle and each bar's tooltip say which.
"""

from __future__ import annotations

import os

import altair as alt
import numpy as np
import pandas as pd

from phasefit.errors import PhasefitError
from reports.charts import LOG_AXIS, log_scale
from reports.data import RunData, compact, condition_label, load_runs

PUBLISHED = (0.43, 0.81)  # Zucchet et al. (2025): plateau end ~ 0.43 * N^0.81 steps
WIDTH, HEIGHT = 340, 230


def as_runs(runs) -> list[RunData]:
    """RunData for each run: a folder of runs, or a list of RunData or run folders."""
    if isinstance(runs, (str, os.PathLike)):
        return load_runs(runs)
    return [r if isinstance(r, RunData) else load_runs(r)[0] for r in runs]


def _table(runs: list[RunData]) -> pd.DataFrame:
    """One row per analysed run: its conditions and measured phases (steps)."""
    rows = []
    for r in runs:
        if r.status == "unreadable":
            continue
        p, c = r.phases, r.conditions
        kind = c.get("sampling", "uniform")
        row = {"run": r.name, "status": r.status, "N": c.get("N"), "kind": kind,
               "alpha": (0.0 if kind == "uniform" else c.get("alpha")) if kind in ("uniform", "power_law") else None,
               "condition": condition_label(c), "seed": c.get("seed"), "warmup": c.get("warmup"),
               "warmup_epochs": c.get("warmup_epochs"), "opacity": 1.0 if r.status == "complete" else 0.4,
               "interval": p.get("ci_kind")}
        for key in ("t1", "t2", "t3", "plateau_length", "final_accuracy", "hallucination_onset"):
            row[key] = p.get(key)
        for key, ci in (("t2", "t2_ci"), ("plateau_length", "plateau_ci"), ("final_accuracy", "final_accuracy_ci")):
            low, high = p.get(ci) or (None, None)
            row[f"{key}_low"], row[f"{key}_high"] = low, high
        rows.append(row)
    return pd.DataFrame(rows)


def crossrun_of(runs: list[RunData], stats=None):
    """``phasefit.crossrun`` of the runs (the fits ``phasefit detect`` prints), unless given."""
    from phasefit.crossrun import crossrun

    if stats is not None:
        return stats
    return crossrun([r.phases | {"config": _nest(r.config)} for r in runs if r.status != "unreadable"])


def _nest(flat: dict) -> dict:
    """{"world.n_individuals": 8} -> {"world": {"n_individuals": 8}} (crossrun reads nested configs)."""
    out: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _bars(table: pd.DataFrame, stats, key: str) -> pd.DataFrame:
    """The 95% interval drawn for the points of ``table``: one bar at the mean of a condition
    with two or more seeds (its interval across them), each other run's own; ``interval``
    says which (a ci_kind)."""
    from phasefit.conditions import condition_of

    of = condition_of(stats.conditions) if len(stats.conditions) else {}
    rows, drawn = [], set()
    for _, r in table.iterrows():
        c = of.get(r["run"])
        if c is None or c["n_seeds"] < 2:
            rows.append(r.to_dict())
        elif tuple(c["runs"]) not in drawn:
            drawn.add(tuple(c["runs"]))
            rows.append({**r.to_dict(), "run": ", ".join(c["runs"]), key: c[key], f"{key}_low": c[f"{key}_lo"],
                         f"{key}_high": c[f"{key}_hi"], "interval": c["ci_kind"]})
    return pd.DataFrame(rows, columns=table.columns)


def _error_bars(table: pd.DataFrame, stats, x: alt.X, key: str, color: alt.Color, fmt: str = ",.0f"):
    """Error bars (``_bars``), with a tick at a condition's mean over its seeds."""
    frame = compact(_bars(table, stats, key).dropna(subset=[f"{key}_low"]))
    tooltip = ["run:N", "interval:N", alt.Tooltip(f"{key}:Q", format=fmt),
               alt.Tooltip(f"{key}_low:Q", format=fmt, title="CI low"), alt.Tooltip(f"{key}_high:Q", format=fmt, title="CI high")]
    bars = alt.Chart(frame).mark_rule().encode(x=x, y=f"{key}_low:Q", y2=f"{key}_high:Q", color=color, tooltip=tooltip,
                                               opacity=alt.Opacity("opacity:Q", legend=None, scale=None))
    seeded = frame[frame["interval"].fillna("").str.startswith("seeds")]
    if seeded.empty:  # an empty layer would give Vega an infinite extent to warn about
        return bars
    return alt.layer(bars, alt.Chart(seeded).mark_tick(thickness=2, size=14).encode(
        x=x, y=f"{key}:Q", color=color, tooltip=tooltip))


def _kinds(table: pd.DataFrame, stats, key: str) -> list[str]:
    """The subtitle that says what the error bars resample: a line per kind."""
    kinds = sorted({k for k in _bars(table, stats, key).dropna(subset=[f"{key}_low"])["interval"] if isinstance(k, str)})
    return [f"95% interval bars, {k}" for k in kinds]


def scaling_chart(runs, stats=None) -> alt.LayerChart:
    """Plateau end t2 (steps) against N on log-log axes: runs with their 95% intervals, the
    fitted power law with its 95% band (complete runs), and the study's 0.43 * N^0.81.
    ``stats``: the runs' ``phasefit.crossrun`` result, if already computed."""
    runs = as_runs(runs)
    table = _table(runs)
    points = table[(table["kind"] != "finetune") & (table["t2"] > 0)].dropna(subset=["N"]) if len(table) else table
    if len(points):  # only conditions swept over N
        points = points[points.groupby("condition")["N"].transform("nunique") >= 2]
    if points.empty:
        raise PhasefitError("scaling_chart: needs runs of one condition with a plateau end at two or more N")
    points = points.assign(series=points["condition"])
    stats = crossrun_of(runs, stats)
    fits = [f for f in stats.scaling if f.quantity == "t2"]
    grid = np.geomspace(points["N"].min(), points["N"].max(), 40)
    lines, bands = [], []
    for fit in fits:
        label = f"fit: {fit.a:.3g} N^{fit.b:.2f} [b {fit.b_ci[0]:.2f}, {fit.b_ci[1]:.2f}], R²={fit.r2:.3f}"
        lines.append(pd.DataFrame({"N": grid, "t2": fit.predict(grid), "series": label}))
        band = _scaling_band(points, fit, grid)
        if band is not None:
            bands.append(band.assign(series=label))
    a, b = PUBLISHED
    lines.append(pd.DataFrame({"N": grid, "t2": a * grid**b, "series": f"published: {a} N^{b}"}))
    curves = compact(pd.concat(lines, ignore_index=True))
    x = alt.X("N:Q", scale=log_scale(), axis=LOG_AXIS, title="individuals N (log)")
    y = alt.Y("t2:Q", scale=log_scale(), axis=LOG_AXIS, title="plateau end t2 (steps, log)")
    color = alt.Color("series:N", title=None, scale=alt.Scale(scheme="tableau10"),
                      legend=alt.Legend(orient="bottom", columns=1, labelLimit=420, symbolOpacity=1))
    layers = []
    if bands:
        layers.append(alt.Chart(compact(pd.concat(bands, ignore_index=True))).mark_area(opacity=0.2).encode(
            x=x, y="low:Q", y2="high:Q", color=color))
    layers.append(alt.Chart(curves).mark_line().encode(
        x=x, y=y, color=color,
        strokeDash=alt.condition(alt.datum.series == f"published: {a} N^{b}", alt.value([6, 4]), alt.value([1, 0]))))
    layers.append(_error_bars(points, stats, x, "t2", color))
    layers.append(alt.Chart(compact(points)).mark_point(filled=True, size=50).encode(
        x=x, y=y, color=color, opacity=alt.Opacity("opacity:Q", legend=None, scale=None),
        tooltip=["run:N", "status:N", "condition:N", alt.Tooltip("N:Q", format=","), alt.Tooltip("t2:Q", format=",.0f")]))
    return alt.layer(*layers).properties(width=WIDTH, height=HEIGHT, title=alt.Title(
        "Plateau end against population size", subtitle=_kinds(points, stats, "t2")))


def _scaling_band(points: pd.DataFrame, fit, grid: np.ndarray) -> pd.DataFrame | None:
    """95% band of the fitted mean log t2 (statsmodels OLS on the runs the fit used)."""
    import statsmodels.api as sm

    used = points[(points["status"] == "complete") & points["N"].isin(fit.n_values)]
    # the fit's fixed conditions, as crossrun names them (it counts uniform as alpha = 0)
    kind = used["kind"].replace({"uniform": "power_law"})
    for key, value in fit.group.items():
        column = {"world.n_individuals": used["N"], "sampling.alpha": used["alpha"], "sampling.kind": kind}.get(key)
        if column is not None:
            used = used[column == value]
    if len(used) < 3 or used["N"].nunique() < 2:
        return None
    model = sm.OLS(np.log(used["t2"].astype(float)), sm.add_constant(np.log(used["N"].astype(float)))).fit()
    low, high = np.exp(model.get_prediction(sm.add_constant(np.log(grid))).conf_int(alpha=0.05)).T
    return pd.DataFrame({"N": grid, "low": low, "high": high})


def alpha_chart(runs, stats=None) -> alt.HConcatChart:
    """Plateau length (log) and final accuracy against alpha (p(i) ~ (rank+1)^-alpha), one line
    per N, with 95% intervals, the valley fitted in alpha near its floor and its minimum (with interval).
    ``stats``: the runs' ``phasefit.crossrun`` result, if already computed."""
    runs = as_runs(runs)
    stats = crossrun_of(runs, stats)
    table = _table(runs)
    table = table[table["kind"].isin(["uniform", "power_law"])].dropna(subset=["alpha"]) if len(table) else table
    if len(table):  # only population sizes swept over alpha
        table = table[table.groupby(table["N"].fillna(-1))["alpha"].transform("nunique") >= 2]
    if table.empty:
        raise PhasefitError("alpha_chart: needs uniform or power-law runs at two or more alpha (same N)")
    table = compact(table.assign(N_label=table["N"].map(lambda n: f"N={n:,}" if pd.notna(n) else "N=?")))
    x = alt.X("alpha:Q", title="alpha (sampling p ~ (rank+1)^-alpha)")
    color = alt.Color("N_label:N", title="population", sort=alt.SortField("N"), legend=alt.Legend(symbolOpacity=1))
    tooltip = ["run:N", "status:N", "alpha:Q", alt.Tooltip("N:Q", format=",")]
    panels = []
    for key, title, scale, fmt in (("plateau_length", "plateau length (steps, log)", "log", ",.0f"),
                                   ("final_accuracy", "final accuracy", "linear", ".1%")):
        data = table.dropna(subset=[key])
        y = alt.Y(f"{key}:Q", title=title, scale=log_scale() if scale == "log" else alt.Scale(zero=False))
        layers = [alt.Chart(data).mark_line(opacity=0.5).encode(x=x, y=y, color=color, detail="N_label:N"),
                  _error_bars(data, stats, x, key, color, fmt),
                  alt.Chart(data).mark_point(filled=True, size=50).encode(
                      x=x, y=y, color=color, opacity=alt.Opacity("opacity:Q", legend=None, scale=None),
                      tooltip=tooltip + [alt.Tooltip(f"{key}:Q", format=fmt)])]
        if key == "plateau_length":
            layers = _alpha_fit_layers(stats, table, x) + layers
        panels.append(alt.layer(*layers).properties(width=300, height=210,
                                                    title=alt.Title(title, subtitle=_kinds(data, stats, key))))
    return alt.hconcat(*panels, title="Imbalanced sampling: plateau and final knowledge against alpha")


def _alpha_fit_layers(stats, table: pd.DataFrame, x: alt.X) -> list[alt.Chart]:
    curves, minima = [], []
    only_n = table["N"].iloc[0] if table["N"].nunique() == 1 else None
    for fit in stats.alpha:
        n = fit.group.get("world.n_individuals", only_n)
        label = f"N={n:,}" if n is not None else "N=?"
        if fit.window:  # the valley is drawn over the alphas it was fitted on (none: too few alphas swept)
            grid = np.linspace(min(fit.window), max(fit.window), 50)
            curves.append(pd.DataFrame({"alpha": grid, "plateau_length": fit.predict(grid), "N_label": label, "N": n}))
        if fit.alpha_min is not None:
            low, high = fit.alpha_ci or (None, None)
            minima.append({"alpha": fit.alpha_min, "low": low, "high": high, "N_label": label, "N": n,
                           "label": f"shortest plateau at alpha={fit.alpha_min:.2f}"})
    layers = []
    color = alt.Color("N_label:N", title="population", sort=alt.SortField("N"))
    if curves:
        layers.append(alt.Chart(compact(pd.concat(curves))).mark_line(strokeDash=[4, 3]).encode(
            x=x, y="plateau_length:Q", color=color))
    if minima:
        frame = compact(pd.DataFrame(minima))
        layers.append(alt.Chart(frame.dropna(subset=["low"])).mark_rect(opacity=0.12).encode(
            x="low:Q", x2="high:Q", color=color))
        layers.append(alt.Chart(frame).mark_rule(strokeDash=[2, 2]).encode(
            x="alpha:Q", color=color, tooltip=["label:N", alt.Tooltip("low:Q", format=".2f", title="CI low"),
                                               alt.Tooltip("high:Q", format=".2f", title="CI high")]))
    return layers


def warmup_chart(runs, value: str = "final_accuracy") -> alt.FacetChart:
    """The warm-up grid as a heat map: ``value`` (final_accuracy or plateau_length) per warm-up
    size (individuals) and epochs, one panel per N; uniform training at that N as reference.
    Seeds of a cell are averaged over its complete runs; a cell with none shows the others (*)."""
    runs = as_runs(runs)
    table = _table(runs)
    if table.empty or not (table["kind"] == "warmup").any():
        raise PhasefitError("warmup_chart: needs warm-up runs (sampling.kind = 'warmup')")
    grid = table[table["kind"].isin(["warmup", "uniform"]) & table["N"].isin(table.loc[table["kind"] == "warmup", "N"])]
    grid = grid.dropna(subset=[value]).copy()
    warm = grid["kind"] == "warmup"
    grid["warm-up individuals"] = np.where(warm, grid["warmup"].map(lambda v: f"{v:,.0f}" if pd.notna(v) else "?"), "none (uniform)")
    grid["epochs"] = np.where(warm, grid["warmup_epochs"].map(lambda v: f"{v:g}" if pd.notna(v) else "?"), "-")
    grid["order"] = np.where(warm, grid["warmup"].fillna(0).astype(float), -1.0)
    grid["panel"] = grid["N"].map(lambda n: f"N={n:,}")
    keys = ["panel", "warm-up individuals", "epochs"]
    # A cell averages its complete runs (seeds); only a cell without any shows its runs still
    # going, marked with a star.
    grid["complete"] = grid["status"] == "complete"
    grid = grid[grid["complete"] | ~grid.groupby(keys)["complete"].transform("any")]
    cells = grid.groupby(keys, as_index=False).agg(
        value=(value, "mean"), order=("order", "first"), runs=("run", lambda s: ", ".join(s)),
        complete=("complete", "all"))
    percent = value == "final_accuracy"
    fmt = ".1%" if percent else ",.0f"
    cells["text"] = [(f"{v:.1%}" if percent else f"{v:,.0f}") + ("" if done else "*")
                     for v, done in zip(cells["value"], cells["complete"])]
    title = "final accuracy" if percent else "plateau length (steps)"
    base = alt.Chart().encode(
        x=alt.X("warm-up individuals:N", sort=alt.SortField("order"), axis=alt.Axis(labelAngle=0)),
        y=alt.Y("epochs:N", title="warm-up epochs"))
    heat = base.mark_rect().encode(color=alt.Color("value:Q", title=title, scale=alt.Scale(scheme="viridis")),
                                   tooltip=["runs:N", alt.Tooltip("value:Q", format=fmt, title=title)])
    text = base.mark_text(fontSize=11).encode(
        text="text:N", color=alt.condition(alt.datum.value > cells["value"].median(), alt.value("black"), alt.value("white")))
    return alt.layer(heat, text, data=compact(cells)).properties(width=alt.Step(70), height=alt.Step(36)).facet(
        facet=alt.Facet("panel:N", title=None), columns=3,
        title=alt.Title(f"Warm-up curriculum: {title}", subtitle="" if cells["complete"].all() else "* runs not complete"))


def finetune_chart(runs) -> alt.LayerChart:
    """Accuracy of old (trained before) and new individuals against fine-tuning step."""
    runs = as_runs(runs)
    parts = []
    for r in runs:
        if r.conditions.get("sampling") != "finetune" or not r.has_data:
            continue
        frame = r.population[r.population["split"].isin(["train", "finetune"])][["step", "split", "accuracy"]].copy()
        frame["individuals"] = frame["split"].map({"train": "old (trained before)", "finetune": "new"})
        frame["run"] = f"{r.name}: {condition_label(r.conditions)}"
        parts.append(frame)
    if not parts:
        raise PhasefitError("finetune_chart: needs fine-tuning runs (sampling.kind = 'finetune')")
    frame = compact(pd.concat(parts, ignore_index=True).dropna(subset=["accuracy"]))
    frame = frame[frame["step"] > 0]
    return alt.Chart(frame).mark_line().encode(
        x=alt.X("step:Q", scale=log_scale(), axis=LOG_AXIS, title="fine-tuning step (log)"),
        y=alt.Y("accuracy:Q", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("run:N", legend=alt.Legend(orient="bottom", columns=1, labelLimit=420)),
        strokeDash=alt.StrokeDash("individuals:N", sort=["old (trained before)", "new"]),
        tooltip=["run:N", "individuals:N", alt.Tooltip("step:Q", format=",.0f"), alt.Tooltip("accuracy:Q", format=".1%")],
    ).properties(width=WIDTH, height=HEIGHT, title="Fine-tuning: old knowledge and new facts")


def known_chart(runs) -> alt.Chart:
    """Facts known (trained individuals' facts correct) against step, per condition."""
    runs = as_runs(runs)
    parts = []
    for r in runs:
        if not r.has_data or r.conditions.get("sampling") == "finetune":
            continue
        frame = r.population[(r.population["split"] == "train") & (r.population["step"] > 0)][["step", "facts_known"]]
        n = r.conditions.get("N")
        parts.append(frame.assign(run=r.name, status=r.status,
                                  condition=condition_label(r.conditions) + (f", N={n:,}" if n is not None else "")))
    if len(parts) < 2:
        raise PhasefitError("known_chart: needs two or more runs with evaluations")
    frame = compact(pd.concat(parts, ignore_index=True).dropna(subset=["facts_known"]))
    return alt.Chart(frame).mark_line().encode(
        x=alt.X("step:Q", scale=log_scale(), axis=LOG_AXIS, title="training step (log)"),
        y=alt.Y("facts_known:Q", title="facts known"),
        color=alt.Color("condition:N", scale=alt.Scale(scheme="tableau20"),
                        legend=alt.Legend(orient="bottom", columns=2, labelLimit=300)), detail="run:N",
        tooltip=["run:N", "status:N", "condition:N", alt.Tooltip("step:Q", format=",.0f"),
                 alt.Tooltip("facts_known:Q", format=",.0f")],
    ).properties(width=WIDTH, height=HEIGHT, title="Facts known over time")


# The index page's sweep figures: (key, heading, chart function).
SWEEP_SECTIONS = (
    ("scaling", "Plateau end against N", scaling_chart),
    ("alpha", "Imbalanced sampling (alpha)", alpha_chart),
    ("warmup", "Warm-up grid: final accuracy", warmup_chart),
    ("warmup_plateau", "Warm-up grid: plateau length", lambda runs: warmup_chart(runs, "plateau_length")),
    ("finetune", "Fine-tuning", finetune_chart),
    ("known", "Facts known over time", known_chart),
)


def sweep_charts(runs, stats=None) -> dict[str, alt.TopLevelMixin]:
    """Every sweep figure the runs support, by key (none for a single run); ``stats``: the
    runs' ``phasefit.crossrun``, if already computed."""
    runs = as_runs(runs)
    stats = crossrun_of(runs, stats)
    out = {}
    for key, _, make in SWEEP_SECTIONS:
        try:
            out[key] = make(runs, stats=stats) if key in ("scaling", "alpha") else make(runs)
        except PhasefitError:
            continue
    return out
