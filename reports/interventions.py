"""Altair charts of intervention runs: fine-tuning, attention patching, sequential groups.

Each takes a run (a ``RunData``, a run folder or a store-schema Dataset) and returns a chart;
the numbers are ``phasefit.detect``'s ``finetune``, ``patching`` and ``sequential`` entries
(definitions in docs/phasefit.md). A run that is not of the kind raises ``PhasefitError``.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

from phasefit.errors import PhasefitError
from reports.charts import HEIGHT, WIDTH, _step_x, _subtitle, as_run
from reports.data import compact

OLD_NEW = {"train": "old (trained before)", "finetune": "new"}
OLD_NEW_COLORS = ["#1f77b4", "#2ca02c"]


def _marker(step: float | None, ci, label: str, color: str) -> list[alt.Chart]:
    """A vertical rule at ``step`` with its interval as a band (nothing if step is missing)."""
    if step is None or step <= 0:
        return []
    low, high = ci or (None, None)
    frame = compact(pd.DataFrame([{"step": step, "low": low, "high": high, "label": label}]))
    layers = [alt.Chart(frame).mark_rule(color=color).encode(
        x="step:Q", tooltip=["label:N", alt.Tooltip("step:Q", format=",.0f"), alt.Tooltip("low:Q", format=",.0f"),
                             alt.Tooltip("high:Q", format=",.0f")])]
    if low is not None and low > 0:
        layers.insert(0, alt.Chart(frame).mark_rect(color=color, opacity=0.2).encode(x="low:Q", x2="high:Q"))
    return layers


def _percent(value) -> str:
    return "–" if value is None else f"{value:.1%}"


def _steps(value) -> str:
    return "–" if value is None else f"{value:,.0f}"


def finetune_run_chart(run) -> alt.HConcatChart:
    """Accuracy and loss of the old (trained before) and new individuals against fine-tuning
    step (log), with the collapse step of old accuracy and its interval (red)."""
    run = as_run(run)
    if run.finetune.empty:
        raise PhasefitError(f"finetune_run_chart: {run.name} is not a fine-tuning run with evaluations")
    f = run.phases["finetune"]
    frame = compact(run.finetune[run.finetune["step"] > 0].assign(individuals=lambda d: d["split"].map(OLD_NEW)))
    color = alt.Color("individuals:N", scale=alt.Scale(domain=list(OLD_NEW.values()), range=OLD_NEW_COLORS))
    panels = []
    for measure, axis in (("accuracy", alt.Y("accuracy:Q", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1]))),
                          ("loss", alt.Y("loss:Q", title="loss (nats)"))):
        line = alt.Chart(frame).mark_line().encode(
            x=_step_x("log", "fine-tuning step"), y=axis, color=color,
            tooltip=["individuals:N", alt.Tooltip("step:Q", format=",.0f"), alt.Tooltip(f"{measure}:Q", format=".3f")])
        marker = _marker(f.get("collapse_step"), f.get("collapse_step_ci"), "collapse step", "#d62728")
        panels.append(alt.layer(*marker, line).properties(width=WIDTH, height=HEIGHT, title=measure))
    subtitle = (f"old accuracy {_percent(f.get('old_accuracy_start'))} at step 0, collapse step "
                f"{_steps(f.get('collapse_step'))}, depth {_percent(f.get('collapse_depth'))}, final "
                f"{_percent(f.get('old_accuracy_final'))}; new facts: half acquired by step "
                f"{_steps(f.get('new_acquisition_step'))}, final accuracy {_percent(f.get('new_accuracy_final'))}")
    return alt.hconcat(*panels, title=alt.Title("Fine-tuning: old knowledge against new facts",
                                                subtitle=[_subtitle(run), subtitle]))


def patching_chart(run) -> alt.HConcatChart:
    """Population loss and accuracy of a patched run over its reference run's (log step),
    with each run's plateau end t2 and the step where patching starts."""
    run = as_run(run)
    p = run.phases.get("patching")
    if not p or run.reference.empty:
        raise PhasefitError(f"patching_chart: {run.name} is not a patched run whose reference run could be read")
    this = run.population[run.population["split"] == "train"][["step", "loss", "accuracy"]]
    label = {"patched": f"patched ({run.name})", "reference": "reference"}
    frame = compact(pd.concat([this.assign(run=label["patched"]), run.reference.assign(run=label["reference"])]))
    frame = frame[frame["step"] > 0]
    color = alt.Color("run:N", title=None, scale=alt.Scale(domain=list(label.values()), range=["#9467bd", "#7f7f7f"]))
    markers = (_marker(p["patched"].get("t2"), p["patched"].get("t2_ci"), "t2 patched", "#9467bd")
               + _marker((p.get("reference_run") or {}).get("t2"), (p.get("reference_run") or {}).get("t2_ci"),
                         "t2 reference", "#7f7f7f")
               + _marker(p.get("start"), None, "patching starts", "black"))
    panels = []
    for measure, axis in (("loss", alt.Y("loss:Q", title="loss (nats)")),
                          ("accuracy", alt.Y("accuracy:Q", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1])))):
        line = alt.Chart(frame).mark_line().encode(
            x=_step_x("log"), y=axis, color=color,
            tooltip=["run:N", alt.Tooltip("step:Q", format=",.0f"), alt.Tooltip(f"{measure}:Q", format=".3f")])
        panels.append(alt.layer(*markers, line).properties(width=WIDTH, height=HEIGHT, title=measure))
    difference = p.get("t2_difference")
    ci = p.get("t2_difference_ci")
    subtitle = (f"reference {p.get('reference')}, attention from its step {_steps(p.get('patterns_from'))}; "
                f"t2 patched minus reference: {_steps(difference)}"
                + (f" [{ci[0]:,.0f}, {ci[1]:,.0f}]" if ci else ""))
    return alt.hconcat(*panels, title=alt.Title("Attention patching against the reference run",
                                                subtitle=[_subtitle(run), subtitle]))


def sequential_chart(run) -> alt.LayerChart:
    """Accuracy of each group of individuals against step (linear), the visits marked."""
    run = as_run(run)
    q = run.phases.get("sequential")
    if not q or run.groups.empty:
        raise PhasefitError(f"sequential_chart: {run.name} is not a sequential run with evaluations")
    frame = compact(run.groups.dropna(subset=["accuracy"]))
    visits = pd.DataFrame([{"start": v["start"], "end": v["end"], "group": v["group"], "visit": v["visit"],
                            "learn_steps": v["learn_steps"], "forget_steps": v["forget_steps"]} for v in q["visits"]])
    color = alt.Color("group:O", title="group (by rank)", scale=alt.Scale(scheme="category10"))
    spans = alt.Chart(compact(visits)).mark_rect(opacity=0.12).encode(
        x="start:Q", x2="end:Q", color=color,
        tooltip=["visit:Q", "group:O", alt.Tooltip("learn_steps:Q", format=",.0f", title="steps to learn"),
                 alt.Tooltip("forget_steps:Q", format=",.0f", title="steps to forget")])
    lines = alt.Chart(frame).mark_line().encode(
        x=_step_x("linear"), y=alt.Y("accuracy:Q", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1])),
        color=color, tooltip=["group:O", alt.Tooltip("step:Q", format=",.0f"), alt.Tooltip("accuracy:Q", format=".1%")])
    subtitle = (f"{q['n_groups']} groups x {q['n_repeats']} repeats; median steps to learn half "
                f"{_steps(q.get('median_learn_steps'))}, to forget half {_steps(q.get('median_forget_steps'))}")
    return alt.layer(spans, lines).properties(
        width=2 * WIDTH, height=HEIGHT, title=alt.Title("Sequential groups", subtitle=[_subtitle(run), subtitle]))


# The intervention runs' page sections: (key, heading, chart function, the RunData table it needs).
INTERVENTION_SECTIONS = (
    ("finetune", "Fine-tuning: old against new knowledge", finetune_run_chart, "finetune"),
    ("patching", "Attention patching against the reference run", patching_chart, "reference"),
    ("sequential", "Sequential groups", sequential_chart, "groups"),
)

