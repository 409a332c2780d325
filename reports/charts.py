"""Altair charts of one run: the phases, the attributes, hallucination, acquisition, attention.

Every function takes a run (a ``RunData``, a run folder, or a store-schema Dataset) and
returns an Altair chart, for notebooks as for the report pages:

    import reports
    reports.loss_chart("runs/paper", scale="log")
    reports.population_chart(run)          # loss and accuracy, linear and log step

Steps are training steps, losses nats. Log-step axes leave out step 0. The three phases are
shaded (marginals learned up to t1, the plateau t1..t2, knowledge emergence t2..t3), each
boundary drawn as a line with its confidence interval as a darker band.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

from phasefit.errors import PhasefitError
from reports.data import RunData, compact, condition_label, run_data

WIDTH, HEIGHT = 300, 190
SPLIT_LABELS = {"train": "trained", "heldout": "held-out", "finetune": "fine-tuning (new)"}
SPLIT_COLORS = {"trained": "#1f77b4", "held-out": "#d62728", "fine-tuning (new)": "#2ca02c"}
PHASES = (("t1", "1: marginals learned"), ("t2", "2: plateau"), ("t3", "3: knowledge emergence"))
PHASE_COLORS = ["#9ecae1", "#fdae6b", "#a1d99b"]


def as_run(run) -> RunData:
    """A ``RunData`` as is; a run folder or store-schema Dataset reduced with ``run_data``."""
    return run if isinstance(run, RunData) else run_data(run)


def log_scale() -> alt.Scale:
    """A log scale that ends at the data (no rounding out to the next power of ten)."""
    return alt.Scale(type="log", nice=False)


LOG_AXIS = alt.Axis(format="~s", labelOverlap="greedy", tickCount=4)  # powers of ten: 1, 10, 100, 1k


def _step_x(scale: str, title: str = "training step") -> alt.X:
    if scale == "log":
        return alt.X("step:Q", title=f"{title} (log)", scale=log_scale(), axis=LOG_AXIS)
    return alt.X("step:Q", title=title, scale=alt.Scale(zero=True))


def _on_axis(frame: pd.DataFrame, scale: str, column: str = "step") -> pd.DataFrame:
    return frame[frame[column] > 0] if scale == "log" and len(frame) else frame


def _chart(frame: pd.DataFrame, scale: str) -> alt.Chart:
    """A chart of ``frame`` that leaves out step 0 on a log axis. The filter is in the spec,
    not the data, so the linear and log charts of a page share one copy of the table."""
    chart = alt.Chart(frame)
    return chart.transform_filter(alt.datum.step > 0) if scale == "log" else chart


def _splits(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    out["individuals"] = out["split"].map(SPLIT_LABELS).fillna(out["split"])
    return out


def _split_color(frame: pd.DataFrame, legend: bool = True) -> alt.Color:
    shown = [label for label in SPLIT_COLORS if label in set(frame.get("individuals", []))]
    return alt.Color("individuals:N", title="individuals", legend=alt.Legend() if legend else None,
                     scale=alt.Scale(domain=shown, range=[SPLIT_COLORS[s] for s in shown]))


def _first_step(run: RunData, scale: str) -> float:
    steps = run.population["step"] if run.has_data else pd.Series([1.0])
    return float(steps[steps > 0].min()) if scale == "log" and (steps > 0).any() else 0.0


def phase_layers(run: RunData, scale: str = "log", legend: bool = True) -> list[alt.Chart]:
    """Shaded phases, each boundary's confidence interval and the boundary lines."""
    p = run.phases
    first = _first_step(run, scale)
    # a boundary at step 0 (or missing) has no place on a log axis, and a phase is shaded
    # only between two boundaries that exist
    edges = {key: p.get(key) for key, _ in PHASES}
    edges = {k: v for k, v in edges.items() if v is not None and (v > 0 or scale != "log")}
    starts = {"t1": first, "t2": edges.get("t1"), "t3": edges.get("t2")}
    spans = [{"phase": label, "start": starts[key], "end": edges[key]} for key, label in PHASES
             if key in edges and starts[key] is not None and edges[key] > starts[key]]
    bounds = [{"boundary": key, "step": value, "low": (p.get(f"{key}_ci") or [None, None])[0],
               "high": (p.get(f"{key}_ci") or [None, None])[1]} for key, value in edges.items()]
    layers = []
    if spans:
        layers.append(alt.Chart(pd.DataFrame(spans)).mark_rect(opacity=0.18).encode(
            x="start:Q", x2="end:Q",
            color=alt.Color("phase:N", title="phase", legend=alt.Legend() if legend else None,
                            scale=alt.Scale(domain=[lbl for _, lbl in PHASES], range=PHASE_COLORS)),
            tooltip=["phase:N", alt.Tooltip("start:Q", format=",.0f"), alt.Tooltip("end:Q", format=",.0f")]))
    if bounds:
        frame = compact(pd.DataFrame(bounds))
        with_ci = frame.dropna(subset=["low", "high"])
        if scale == "log":
            with_ci = with_ci[with_ci["high"] > first].assign(low=with_ci["low"].clip(lower=first))
        if len(with_ci):
            layers.append(alt.Chart(with_ci).mark_rect(opacity=0.35, color="#636363").encode(x="low:Q", x2="high:Q"))
        layers.append(alt.Chart(frame).mark_rule(color="#525252", strokeWidth=1).encode(
            x="step:Q", tooltip=["boundary:N", alt.Tooltip("step:Q", format=",.0f", title="step"),
                                 alt.Tooltip("low:Q", format=",.0f", title="CI low"),
                                 alt.Tooltip("high:Q", format=",.0f", title="CI high")]))
    return layers


def _baseline_rule(value: float | None, label: str = "baseline B", unit: str = "nats",
                   fmt: str = ".3f") -> list[alt.Chart]:
    """A dashed level with its label at the right edge (none for a missing value)."""
    if value is None:
        return []
    frame = pd.DataFrame({"baseline": [value], "label": [label]})
    rule = alt.Chart(frame).mark_rule(strokeDash=[6, 4], color="black").encode(
        y="baseline:Q", tooltip=["label:N", alt.Tooltip("baseline:Q", format=fmt, title=unit)])
    text = alt.Chart(frame).mark_text(align="right", baseline="bottom", dx=-2, dy=-2, fontSize=10).encode(
        y="baseline:Q", x=alt.value("width"), text="label:N")  # at the right edge, whatever the width
    return [rule, text]


def loss_chart(run, scale: str = "log", legend: bool = True) -> alt.LayerChart:
    """Population loss (nats) of trained and held-out individuals against step, the band of
    individuals' mean loss (10-90% and 25-75% across individuals), the baseline and phases.
    ``scale``: "log" or "linear" step axis; ``legend``: draw the legends."""
    run = as_run(run)
    frame = _splits(compact(run.population))
    trained = _chart(frame, scale).transform_filter(alt.datum.split == "train")
    x = _step_x(scale)
    outer = trained.mark_area(opacity=0.15, color=SPLIT_COLORS["trained"]).encode(
        x=x, y=alt.Y("q10:Q", title="loss (nats)"), y2="q90:Q")
    inner = trained.mark_area(opacity=0.3, color=SPLIT_COLORS["trained"]).encode(x=x, y="q25:Q", y2="q75:Q")
    line = _chart(frame, scale).mark_line().encode(
        x=x, y="loss:Q", color=_split_color(frame, legend),
        tooltip=["individuals:N", alt.Tooltip("step:Q", format=",.0f"), alt.Tooltip("loss:Q", format=".3f"),
                 alt.Tooltip("q25:Q", format=".3f"), alt.Tooltip("q75:Q", format=".3f")])
    layers = phase_layers(run, scale, legend) + [outer, inner, line] + _baseline_rule(run.phases.get("baseline"))
    return alt.layer(*layers).resolve_scale(color="independent").properties(
        width=WIDTH, height=HEIGHT, title=f"Population loss ({scale} step)")


def accuracy_chart(run, scale: str = "log", legend: bool = True) -> alt.LayerChart:
    """Share of facts correct (every value token the argmax) against step, with the phases and
    the chance level (the no-knowledge model's accuracy, as the loss chart draws B)."""
    run = as_run(run)
    frame = _splits(compact(run.population))
    line = _chart(frame, scale).mark_line().encode(
        x=_step_x(scale), y=alt.Y("accuracy:Q", title="accuracy", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1])),
        color=_split_color(frame, legend),
        tooltip=["individuals:N", alt.Tooltip("step:Q", format=",.0f"), alt.Tooltip("accuracy:Q", format=".1%"),
                 alt.Tooltip("facts_known:Q", format=",.0f", title="facts known")])
    chance = _baseline_rule(run.phases.get("chance_accuracy"), "chance", "accuracy", ".1%")
    return alt.layer(*phase_layers(run, scale, legend), line, *chance).resolve_scale(color="independent").properties(
        width=WIDTH, height=HEIGHT, title=f"Population accuracy ({scale} step)")


def population_chart(run) -> alt.VConcatChart:
    """Loss and accuracy against linear and log step, side by side."""
    run = as_run(run)
    return alt.vconcat(alt.hconcat(loss_chart(run, "linear", legend=False), loss_chart(run, "log")),
                       alt.hconcat(accuracy_chart(run, "linear", legend=False), accuracy_chart(run, "log", legend=False)),
                       title=alt.Title("The three phases", subtitle=_subtitle(run)))


def attribute_loss_chart(run, scale: str = "log") -> alt.FacetChart:
    """Loss of trained individuals per attribute, each with its own baseline (dashed)."""
    run = as_run(run)
    frame = compact(_on_axis(run.attributes[run.attributes["split"] == "train"], scale))
    line = alt.Chart().mark_line(color=SPLIT_COLORS["trained"]).encode(
        x=_step_x(scale), y=alt.Y("loss:Q", title="loss (nats)"),
        tooltip=[alt.Tooltip("step:Q", format=",.0f"), alt.Tooltip("loss:Q", format=".3f"),
                 alt.Tooltip("accuracy:Q", format=".1%")])
    rule = alt.Chart().mark_rule(strokeDash=[6, 4], color="black").encode(
        y="mean(baseline):Q", tooltip=[alt.Tooltip("mean(baseline):Q", format=".3f", title="baseline (nats)")])
    return alt.layer(line, rule, data=frame).properties(width=210, height=130).facet(
        facet=alt.Facet("attribute:N", title=None), columns=3).resolve_scale(y="independent")


def attribute_accuracy_chart(run, scale: str = "log") -> alt.Chart:
    """Accuracy of trained individuals per attribute."""
    run = as_run(run)
    frame = compact(_on_axis(run.attributes[run.attributes["split"] == "train"], scale))
    return alt.Chart(frame).mark_line().encode(
        x=_step_x(scale), y=alt.Y("accuracy:Q", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("attribute:N"),
        tooltip=["attribute:N", alt.Tooltip("step:Q", format=",.0f"), alt.Tooltip("accuracy:Q", format=".1%")],
    ).properties(width=WIDTH, height=HEIGHT, title="Accuracy per attribute")


def attributes_chart(run) -> alt.VConcatChart:
    """The six attributes separately: loss with baselines, and accuracy."""
    run = as_run(run)
    return alt.vconcat(attribute_loss_chart(run), attribute_accuracy_chart(run),
                       title=alt.Title("The six attributes (trained individuals)", subtitle=_subtitle(run)))


def hallucination_chart(run) -> alt.HConcatChart:
    """Held-out (never trained) against trained individuals: loss, top_prob, entropy.

    Held-out loss above the baseline is over-confidence (hallucination); its onset is drawn
    with its interval. Lower top_prob and higher entropy on held-out individuals make
    hallucinations partly detectable."""
    run = as_run(run)
    frame = _splits(compact(_on_axis(run.confidence, "log")))
    color = _split_color(frame)
    x = _step_x("log")
    panels = []
    for measure, title in (("loss", "loss (nats)"), ("top_prob", "top probability"), ("entropy", "entropy (nats)")):
        line = alt.Chart(frame).mark_line().encode(
            x=x, y=alt.Y(f"{measure}:Q", title=title), color=color,
            tooltip=["individuals:N", alt.Tooltip("step:Q", format=",.0f"), alt.Tooltip(f"{measure}:Q", format=".3f")])
        layers = _boundary_rules(run, ("t2",)) + [line]
        if measure == "loss":
            layers = _onset_layers(run) + layers + _baseline_rule(run.phases.get("baseline"))
        panels.append(alt.layer(*layers).properties(width=240, height=170, title=title))
    return alt.hconcat(*panels, title=alt.Title("Hallucination: held-out against trained individuals",
                                                subtitle=_subtitle(run)))


def _boundary_rules(run: RunData, keys) -> list[alt.Chart]:
    rows = [{"boundary": k, "step": run.phases[k]} for k in keys if run.phases.get(k)]
    if not rows:
        return []
    return [alt.Chart(pd.DataFrame(rows)).mark_rule(color="#525252", strokeDash=[2, 2]).encode(
        x="step:Q", tooltip=["boundary:N", alt.Tooltip("step:Q", format=",.0f")])]


def _onset_layers(run: RunData) -> list[alt.Chart]:
    onset = run.phases.get("hallucination_onset")
    if not onset:
        return []
    ci = run.phases.get("hallucination_onset_ci") or [None, None]
    frame = compact(pd.DataFrame([{"step": onset, "low": ci[0], "high": ci[1], "label": "hallucination onset"}]))
    layers = [alt.Chart(frame).mark_rule(color="#d62728").encode(
        x="step:Q", tooltip=["label:N", alt.Tooltip("step:Q", format=",.0f"), alt.Tooltip("low:Q", format=",.0f"),
                             alt.Tooltip("high:Q", format=",.0f")])]
    if ci[0] is not None:
        layers.insert(0, alt.Chart(frame).mark_rect(color="#d62728", opacity=0.2).encode(x="low:Q", x2="high:Q"))
    return layers


def acquisition_histogram_chart(run) -> alt.LayerChart:
    """Distribution of per-fact acquisition steps (log-spaced bins), stacked by attribute."""
    run = as_run(run)
    frame = compact(run.acquisition)
    never = run.never_acquired
    bars = alt.Chart(frame).mark_bar(stroke="white", strokeWidth=0.3).encode(
        x=alt.X("step_lo:Q", scale=log_scale(), axis=LOG_AXIS, title="acquisition step (log)"), x2="step_hi:Q",
        y=alt.Y("sum(facts):Q", title="facts acquired", stack="zero"), color=alt.Color("attribute:N"),
        tooltip=["attribute:N", alt.Tooltip("step_lo:Q", format=",.0f", title="from step"),
                 alt.Tooltip("step_hi:Q", format=",.0f", title="to step"), alt.Tooltip("sum(facts):Q", title="facts")])
    title = alt.Title("Per-fact acquisition steps", subtitle="" if never is None else f"{never:.1%} of facts never acquired")
    return alt.layer(bars, *_boundary_rules(run, ("t2", "t3"))).properties(width=WIDTH, height=HEIGHT, title=title)


def acquired_by_decile_chart(run) -> alt.Chart:
    """Share of each frequency-rank decile's facts acquired, against step."""
    run = as_run(run)
    frame = compact(_on_axis(run.acquired_fraction, "log"))
    return alt.Chart(frame).mark_line().encode(
        x=_step_x("log"), y=alt.Y("fraction:Q", title="facts acquired", axis=alt.Axis(format="%")),
        color=alt.Color("decile:O", title="rank decile (0 = most frequent)", scale=alt.Scale(scheme="viridis")),
        tooltip=["decile:O", alt.Tooltip("step:Q", format=",.0f"), alt.Tooltip("fraction:Q", format=".1%")],
    ).properties(width=WIDTH, height=HEIGHT, title="Acquisition by frequency-rank decile")


def _by_rank_panel(frame: pd.DataFrame, column: str, title: str) -> alt.LayerChart:
    x = alt.X("rank_mid:Q", scale=log_scale(), axis=LOG_AXIS, title="frequency rank + 1 (log; 1 = most frequent)")
    band = alt.Chart(frame).mark_area(opacity=0.3).encode(
        x=x, y=alt.Y(f"{column}_q25:Q", scale=log_scale(), axis=LOG_AXIS, title=f"{title} (log)"), y2=f"{column}_q75:Q")
    line = alt.Chart(frame).mark_line(point=True).encode(
        x=x, y=f"{column}_median:Q",
        tooltip=[alt.Tooltip("rank_lo:Q", title="ranks from"), alt.Tooltip("rank_hi:Q", title="to"), "facts:Q",
                 alt.Tooltip("acquired:Q", format=".1%"), alt.Tooltip(f"{column}_median:Q", format=",.0f", title="median"),
                 alt.Tooltip(f"{column}_q25:Q", format=",.0f", title="q25"),
                 alt.Tooltip(f"{column}_q75:Q", format=",.0f", title="q75")])
    return alt.layer(band, line).properties(width=WIDTH, height=HEIGHT, title=f"{title} by frequency rank (median, IQR)")


def _rank_panels(run: RunData) -> list[alt.LayerChart]:
    panels = []
    for column, title in (("exposures", "exposures at acquisition"), ("step", "acquisition step")):
        if not len(run.by_rank):
            break
        # a log axis: zero (a fact known before any exposure) cannot be drawn
        frame = run.by_rank[run.by_rank[f"{column}_median"] > 0]
        frame = frame.assign(**{f"{column}_q25": frame[f"{column}_q25"].where(frame[f"{column}_q25"] > 0)})
        if len(frame):
            panels.append(_by_rank_panel(compact(frame), column, title))
    return panels


def rank_chart(run) -> alt.HConcatChart:
    """Exposures at acquisition, and acquisition step, against frequency rank (the panels
    with data: a run in which no fact was acquired after an exposure has none)."""
    panels = _rank_panels(as_run(run))
    if not panels:
        raise PhasefitError("rank_chart: no fact of the train split was acquired after an exposure")
    return alt.hconcat(*panels)


def acquisition_chart(run) -> alt.VConcatChart:
    """Per-fact acquisition: when, by rank decile, after how many exposures."""
    run = as_run(run)
    top = alt.hconcat(acquisition_histogram_chart(run), acquired_by_decile_chart(run)).resolve_scale(color="independent")
    panels = _rank_panels(run)
    return alt.vconcat(top, *([alt.hconcat(*panels)] if panels else []),
                       title=alt.Title("When facts are acquired", subtitle=_subtitle(run)))


def attention_chart(run) -> alt.HConcatChart:
    """The attention signatures per layer over time (mean over heads; band: min to max)."""
    run = as_run(run)
    frame = compact(_on_axis(run.attention, "log"))
    panels = []
    for signature in pd.unique(frame["signature"]) if len(frame) else []:
        part = frame.loc[frame["signature"] == signature, ["step", "layer", "mean", "low", "high"]]
        color = alt.Color("layer:O", scale=alt.Scale(scheme="plasma"))
        band = alt.Chart(part).mark_area(opacity=0.12).encode(x=_step_x("log"), y="low:Q", y2="high:Q", color=color)
        line = alt.Chart(part).mark_line().encode(
            x=_step_x("log"), y=alt.Y("mean:Q", title="mean over heads"), color=color,
            tooltip=["layer:O", alt.Tooltip("step:Q", format=",.0f"), alt.Tooltip("mean:Q", format=".3f"),
                     alt.Tooltip("low:Q", format=".3f"), alt.Tooltip("high:Q", format=".3f")])
        panels.append(alt.layer(*_boundary_rules(run, ("t1", "t2")), band, line).properties(
            width=240, height=170, title=signature))
    return alt.hconcat(*panels, title=alt.Title("Attention signatures per layer", subtitle=_subtitle(run)))


def training_chart(run) -> alt.HConcatChart:
    """Training loss (mean token loss per step; band: min to max within a bin) and lr."""
    run = as_run(run)
    frame = compact(run.training)
    logged = _on_axis(frame, "log")
    band = alt.Chart(logged).mark_area(opacity=0.25).encode(
        x=_step_x("log"), y=alt.Y("loss_min:Q", title="training loss (nats per token)"), y2="loss_max:Q")
    line = alt.Chart(logged).mark_line().encode(
        x=_step_x("log"), y="loss:Q", tooltip=[alt.Tooltip("step_lo:Q", title="from step"),
                                                alt.Tooltip("step_hi:Q", title="to step"),
                                                alt.Tooltip("loss:Q", format=".4f")])
    loss = alt.layer(*_boundary_rules(run, ("t1", "t2", "t3")), band, line).properties(
        width=WIDTH, height=HEIGHT, title="Training loss")
    lr = alt.Chart(frame).mark_line(color="#6a51a3").encode(
        x=_step_x("linear"), y=alt.Y("lr:Q", title="learning rate", axis=alt.Axis(format=".1e")),
        tooltip=[alt.Tooltip("step:Q", format=",.0f"), alt.Tooltip("lr:Q", format=".2e")],
    ).properties(width=WIDTH, height=HEIGHT, title="Learning rate")
    return alt.hconcat(loss, lr, title=alt.Title("Training", subtitle=_subtitle(run)))


def _subtitle(run: RunData) -> str:
    parts = [run.name, condition_label(run.conditions)]
    if "N" in run.conditions:
        parts.append(f"N={run.conditions['N']:,}")
    if run.status != "complete":
        parts.append(run.status)
    return ", ".join(parts)


# The run page's sections of every run: (key, heading, chart function, the table it needs);
# reports.site puts the intervention runs' sections (reports.interventions) before them.
RUN_SECTIONS = (
    ("population", "The three phases", population_chart, "population"),
    ("attributes", "The six attributes", attributes_chart, "attributes"),
    ("hallucination", "Hallucination", hallucination_chart, "confidence"),
    ("acquisition", "Per-fact acquisition", acquisition_chart, "acquisition"),
    ("attention", "Attention signatures", attention_chart, "attention"),
    ("training", "Training loss and learning rate", training_chart, "training"),
)

