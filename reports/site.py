"""The static report site: an index of every run (with the sweep figures) and a page per run.

    phasefit report RUNS_DIR [-o DIR] [--png]

writes DIR/index.html, DIR/runs/<run>.html and, with --png, DIR/png/<page>/<chart>.png.
Pages open offline: Vega, Vega-Lite and Vega-Embed are inlined (vl-convert's bundle), the
data is inlined as small pre-aggregated tables, and a Content-Security-Policy forbids any
request. Every text from a run (its name, config values, notes) is HTML-escaped, and the chart
specs are embedded as JSON with <, > and & escaped. Each page is written to a temporary file
and renamed, so a page being regenerated while runs still train is never seen half-written;
the stores are read at their committed rows, so a live run shows what it has committed.
"""

from __future__ import annotations

import functools
import hashlib
import html
import json
import os
import re
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import altair as alt

from phasefit.conditions import HEADLINE
from reports.charts import RUN_SECTIONS as PHASE_SECTIONS, as_run
from reports.data import RunData, load_runs
from reports.interventions import INTERVENTION_SECTIONS
from reports.sweeps import SWEEP_SECTIONS, crossrun_of, sweep_charts

CSP = ("default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; "
       "img-src data: blob:; font-src data:")

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em 2em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
.meta { color: #555; font-size: 0.9em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.8em 0; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.state { padding: 0.1em 0.5em; border-radius: 0.8em; font-size: 0.85em; white-space: nowrap; }
.state-complete { background: #dff0d8; } .state-running { background: #fcf8e3; }
.state-failed, .state-unreadable { background: #f2dede; }
.notes { color: #666; font-size: 0.9em; max-width: 38em; }
.chart { margin: 0.5em 0 1em; } .chart-error { color: #a94442; white-space: pre-wrap; }
"""

# Embeds every chart of the page, shows an error in a chart's box if it fails, and marks the
# page done (body[data-charts]) when every chart has been embedded or has failed.
EMBED = """(function () {
  var specs = JSON.parse(document.getElementById('chart-specs').textContent);
  var options = {renderer: 'svg', actions: {export: true, source: false, compiled: false, editor: false}};
  var jobs = Object.keys(specs).map(function (id) {
    return vegaEmbed('#' + id, specs[id], options).catch(function (err) {
      var note = document.createElement('pre');
      note.className = 'chart-error';
      note.textContent = 'This chart could not be drawn: ' + err;
      document.getElementById(id).appendChild(note);
      console.error('chart ' + id + ': ' + err);
    });
  });
  Promise.all(jobs).then(function () { document.body.dataset.charts = String(jobs.length); });
})();"""


@functools.cache
def _vl_version() -> str | None:
    """The Vega-Lite version Altair writes (e.g. "6.4"), if vl-convert has it."""
    import vl_convert

    version = ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])
    return version if version in vl_convert.get_vegalite_versions() else None


@functools.cache
def javascript_bundle() -> str:
    """Vega, Vega-Lite and Vega-Embed in one script (vl-convert's bundle; about 0.9 MB)."""
    import vl_convert

    bundle = vl_convert.javascript_bundle(vl_version=_vl_version())
    return bundle.replace("</script", "<\\/script")  # cannot end the inline <script> early (it has none today)


def _script_json(value) -> str:
    """JSON that is safe inside <script>: no </script>, <!-- or & can appear in it."""
    text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def page_slug(name: str) -> str:
    """A file name for a run's page: the run name when it is plain, else a cleaned name and a hash."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "run"
    if safe != name:
        safe = f"{safe[:60]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return safe


def chart_specs(charts: dict[str, alt.TopLevelMixin]) -> dict[str, dict]:
    """Vega-Lite specs of the charts, keyed by their container id on the page."""
    # Altair validates every chart as it is built; a second validation of the whole spec
    # would double the cost of a page.
    return {f"chart-{key}": chart.to_dict(validate=False) for key, chart in charts.items()}


def render_page(title: str, body: str, specs: dict[str, dict]) -> str:
    """A whole offline page: ``body`` is trusted HTML (already escaped), ``specs`` the charts."""
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n"
            f"<script>\n{javascript_bundle()}\n</script>\n</head>\n<body>\n{body}\n"
            f'<script type="application/json" id="chart-specs">{_script_json(specs)}</script>\n'
            f"<script>\n{EMBED}\n</script>\n</body>\n</html>\n")


def _write(path: Path, content: str | bytes) -> None:
    """Write through a temporary file and rename: a reader never sees a half-written page."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content.encode() if isinstance(content, str) else content)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_pngs(specs: dict[str, dict], folder: Path, scale: float = 1.5) -> list[Path]:
    """A PNG of every chart (vl-convert, no browser): folder/<chart key>.png."""
    import vl_convert

    written = []
    for chart_id, spec in specs.items():
        path = folder / f"{chart_id.removeprefix('chart-')}.png"
        _write(path, vl_convert.vegalite_to_png(spec, vl_version=_vl_version(), scale=scale))
        written.append(path)
    return written


# The run page's sections: an intervention run's own figure first, then every run's.
RUN_SECTIONS = INTERVENTION_SECTIONS + PHASE_SECTIONS


def run_charts(run) -> dict[str, alt.TopLevelMixin]:
    """Every section chart of the run page that the run has data for, by key."""
    run = as_run(run)
    return {key: make(run) for key, _, make, table in RUN_SECTIONS if len(getattr(run, table))}


# ----------------------------------------------------------------------------- page bodies

def _steps(value) -> str:
    return "–" if value is None else f"{value:,.0f}"


def _with_ci(value, ci, fmt: str = ",.0f") -> str:
    if value is None:
        return "–"
    text = format(value, fmt)
    return text + (f" [{format(ci[0], fmt)}, {format(ci[1], fmt)}]" if ci and None not in ci else "")


def _state(status: str) -> str:
    return f'<span class="state state-{html.escape(status)}">{html.escape(status)}</span>'


def _conditions_text(run: RunData, keys: list[str]) -> str:
    from phasefit.runs import describe

    return describe(run.conditions, keys) or "–"


def _phase_cells(p: dict) -> str:
    acc = p.get("final_accuracy")
    cells = [_steps(p.get("t1")), _with_ci(p.get("t2"), p.get("t2_ci")), _steps(p.get("t3")),
             _with_ci(p.get("plateau_length"), p.get("plateau_ci")),
             "–" if acc is None else _with_ci(acc, p.get("final_accuracy_ci"), ".1%"),
             _with_ci(p.get("hallucination_onset"), p.get("hallucination_onset_ci"))]
    return "".join(f'<td class="num">{html.escape(c)}</td>' for c in cells)


PHASE_HEADERS = ("t1", "t2 [95% CI]", "t3", "plateau [95% CI]", "final accuracy [95% CI]", "hallucination onset [95% CI]")


def _notes(notes) -> str:
    return "<br>".join(html.escape(str(n)) for n in notes or [])


def _interval_kinds(phases: list[dict]) -> str:
    """The line under a table of intervals that says what they resample."""
    kinds = sorted({p["ci_kind"] for p in phases if p.get("ci_kind")})
    return f'<p class="meta">95% intervals: {html.escape("; ".join(kinds))}</p>' if kinds else ""


CONDITION_HEADERS = ("t1 [95% CI]", "t2 [95% CI]", "t3 [95% CI]", "plateau [95% CI]",  # phasefit.conditions.HEADLINE's
                     "final accuracy [95% CI]", "hallucination onset [95% CI]", "hallucination lag [95% CI]")


def _condition_rows(rows: list[dict], lead: bool) -> str:
    """Rows of a table of conditions (``phasefit.conditions.condition_summary``), ``lead``: with
    the conditions and seeds columns."""
    out = []
    for c in rows:
        cells = [_with_ci(c.get(q), [c.get(f"{q}_lo"), c.get(f"{q}_hi")], ".1%" if q == "final_accuracy" else ",.0f")
                 for q in HEADLINE]
        first = (f"<td>{html.escape(str(c['conditions']))}</td><td class=\"num\">{c['n_seeds']}</td>" if lead else
                 f"<td>{html.escape(', '.join(c['runs']))}</td>")
        out.append(f"<tr>{first}" + "".join(f'<td class="num">{html.escape(x)}</td>' for x in cells)
                   + f'<td class="notes">{_notes(c.get("notes"))}</td></tr>')
    return "".join(out)


def _conditions_table(rows: list[dict], lead: bool = True) -> str:
    """The table of conditions with two or more seeds, what its intervals resample under it."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in
                   ((("conditions", "seeds") if lead else ("runs (seeds)",)) + CONDITION_HEADERS + ("notes",)))
    return (f"<table class=\"conditions\"><thead><tr>{head}</tr></thead><tbody>{_condition_rows(rows, lead)}</tbody></table>"
            + _interval_kinds(rows))


def seeded_conditions(stats) -> list[dict]:
    """The rows of ``stats.conditions`` (a ``CrossRun``) with two or more seeds, as dicts."""
    table = stats.conditions
    return table[table["n_seeds"] >= 2].to_dict("records") if len(table) else []


def index_body(runs: list[RunData], title: str, sections: list[tuple[str, str]], links: dict[str, str],
               conditions: list[dict] = ()) -> str:
    """The index: the conditions with two or more seeds (``conditions``: their rows of the
    condition summary, with intervals across seeds), then every run with conditions, state,
    phases with intervals (one seed's), links; then the sweep figures (``sections``: chart
    key, heading)."""
    from phasefit.runs import varying

    keys = varying([r.conditions for r in runs if r.conditions]) or ["N", "sampling"]
    counts = {s: sum(r.status == s for r in runs) for s in ("complete", "running", "failed", "unreadable")}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    rows = []
    for r in runs:
        name = html.escape(r.name)
        link = f'<a href="{html.escape(links[r.name])}">{name}</a>' if r.name in links else name
        p = r.phases
        progress = f"{_steps(p.get('last_step'))} / {_steps(p.get('n_steps'))}" if p.get("last_step") is not None else "–"
        rows.append(f"<tr><td>{link}</td><td>{_state(r.status)}</td><td>{html.escape(_conditions_text(r, keys))}</td>"
                    f'<td class="num">{html.escape(progress)}</td>{_phase_cells(p)}'
                    f'<td class="notes">{_notes(p.get("notes"))}</td></tr>')
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ("run", "state", "conditions", "steps (evaluated / planned)",
                                                         *PHASE_HEADERS, "notes"))
    figures = "".join(f'<section id="{key}"><h2>{html.escape(heading)}</h2><div class="chart" id="chart-{key}"></div></section>'
                      for key, heading in sections)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    seeded = f"<h2>Conditions (across seeds)</h2>{_conditions_table(list(conditions))}" if conditions else ""
    each = " (each interval from one seed)" if conditions else ""
    return (f"<header><h1>{html.escape(title)}</h1><p class=\"meta\">{len(runs)} runs ({html.escape(summary)}); "
            f"generated {when} from the committed rows of each store. Steps are training steps.</p></header>\n"
            f"<main>{seeded}<h2>Runs{each}</h2><table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
            f"{_interval_kinds([r.phases for r in runs])}\n"
            + (f"<h2>Across runs</h2>{figures}" if figures else "") + "</main>")


def run_body(run: RunData, sections: list[tuple[str, str]], index_href: str | None,
             condition: dict | None = None) -> str:
    """A run's page: its conditions, state and phases with intervals, its condition's across
    seeds (``condition``: its row of the condition summary, when it has two or more seeds),
    then its figures."""
    p = run.phases
    back = f'<p><a href="{html.escape(index_href)}">&larr; all runs</a></p>' if index_href else ""
    conditions = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                         for k, v in run.conditions.items())
    head = "".join(f"<th>{html.escape(h)}</th>" for h in PHASE_HEADERS)
    sources = ", ".join(f"{k}: {v}" for k, v in (p.get("sources") or {}).items())
    method = f"method {p.get('method', '?')}" + (f" ({sources})" if sources else "")
    figures = "".join(f'<section id="{key}"><h2>{html.escape(heading)}</h2><div class="chart" id="chart-{key}"></div></section>'
                      for key, heading in sections)
    baseline = p.get("baseline")
    seeded = (f"<h2>Its condition, across {condition['n_seeds']} seeds</h2>{_conditions_table([condition], False)}"
              if condition else "")
    return (f"<header>{back}<h1>{html.escape(run.name)} {_state(run.status)}</h1>"
            f"<p class=\"meta\">evaluated to step {_steps(p.get('last_step'))} of {_steps(p.get('n_steps'))}; "
            f"baseline B = {'–' if baseline is None else f'{baseline:.3f}'} nats; {html.escape(method)}</p></header>\n"
            f"<main><h2>Phases</h2><table><thead><tr>{head}</tr></thead><tbody><tr>{_phase_cells(p)}</tr></tbody></table>"
            f"{_interval_kinds([p])}"
            f'<p class="notes">{_notes(p.get("notes"))}</p>{seeded}'
            f"<h2>Conditions</h2><table>{conditions}</table>\n{figures or '<p>No committed evaluation yet.</p>'}</main>")


# ----------------------------------------------------------------------------- pages

def write_run_page(run: RunData, path, index_href: str | None = None, png_folder: Path | None = None,
                   condition: dict | None = None) -> dict:
    """Write one run's page (``condition``: its condition's row of the condition summary, shown
    when it has two or more seeds); returns its specs (chart id -> Vega-Lite)."""
    charts = run_charts(run) if run.has_data else {}
    specs = chart_specs(charts)
    sections = [(key, heading) for key, heading, _, _ in RUN_SECTIONS if key in charts]
    _write(Path(path), render_page(f"{run.name}: phasefit run", run_body(run, sections, index_href, condition), specs))
    if png_folder is not None and specs:
        write_pngs(specs, png_folder)
    return specs


def write_index(runs: list[RunData], path, links: dict[str, str], title: str, png_folder: Path | None = None,
                stats=None) -> dict:
    """Write the index page (with the conditions across seeds and the sweep figures the runs
    support; ``stats``: their ``phasefit.crossrun``, if already computed); returns its specs."""
    stats = crossrun_of(runs, stats)
    charts = sweep_charts(runs, stats)
    specs = chart_specs(charts)
    sections = [(key, heading) for key, heading, _ in SWEEP_SECTIONS if key in charts]
    _write(Path(path), render_page(title, index_body(runs, title, sections, links, seeded_conditions(stats)), specs))
    if png_folder is not None and specs:
        write_pngs(specs, png_folder)
    return specs


def run_page(run, path=None) -> alt.VConcatChart:
    """Every figure of a run's page as one Altair chart; with ``path``, also write the page."""
    from reports.charts import as_run

    run = as_run(run)
    if path is not None:
        write_run_page(run, path)
    return alt.vconcat(*run_charts(run).values())


def sweep_page(runs, path=None) -> alt.VConcatChart:
    """Every sweep figure the runs support as one Altair chart; with ``path``, also write the
    index page (its run links are left out)."""
    from reports.sweeps import as_runs

    runs = as_runs(runs)
    if path is not None:
        write_index(runs, path, {}, "phasefit report")
    return alt.vconcat(*sweep_charts(runs).values())


def report(runs_dir, out=None, *, png: bool = False, n_boot: int = 200, method: str = "auto",
           progress: bool = False) -> list[Path]:
    """Write the site for every run under ``runs_dir`` into ``out`` (default RUNS_DIR/report).

    Returns the pages written, the index first (and the PNGs after them with ``png``).
    """
    return _build(runs_dir, out, png, n_boot, method, progress)[1]


def _build(runs_dir, out, png: bool, n_boot: int, method: str, progress: bool) -> tuple[list[RunData], list[Path]]:
    runs_dir = Path(runs_dir)
    out = Path(out) if out is not None else runs_dir / "report"
    runs = load_runs(runs_dir, n_boot=n_boot, method=method, progress=progress)
    links, written = {}, []
    for run in runs:
        if run.status == "unreadable":
            continue
        slug = page_slug(run.name)
        while f"runs/{slug}.html" in links.values():  # two names that clean to the same file
            slug = f"{slug}-{len(links)}"
        links[run.name] = f"runs/{slug}.html"
    index = out / "index.html"
    pngs = out / "png"
    title = f"phasefit report: {runs_dir.resolve().name}"
    stats = crossrun_of(runs)
    write_index(runs, index, links, title, pngs / "index" if png else None, stats)
    written.append(index)
    seeded = {name: c for c in seeded_conditions(stats) for name in c["runs"]}
    for run in runs:
        if run.name in links:
            page = out / links[run.name]
            write_run_page(run, page, "../index.html", pngs / page.stem if png else None, seeded.get(run.name))
            written.append(page)
    if png:
        written.extend(sorted(pngs.rglob("*.png")))
    return runs, written


def report_from_cli(runs_dir, out=None, png: bool = False) -> int:
    """Entry point of ``phasefit report``: 0 when every run was drawn, 1 when some could not
    be read (the index lists them with the reason). Bad arguments raise PhasefitError."""
    from logstore import find_runs
    from phasefit.errors import PhasefitError
    from phasefit.runs import is_run, run_folder

    path = run_folder(runs_dir)  # a run's store: report its run (the site goes beside the store)
    if not path.exists():
        raise PhasefitError(f"{runs_dir}: no such folder")
    if not path.is_dir():
        raise PhasefitError(f"{runs_dir}: not a folder of runs")
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise PhasefitError(f"-o {out}: exists and is not a folder")
    if not is_run(path) and not find_runs(path):
        raise PhasefitError(f"{runs_dir}: no runs (no folder below it holds metrics.zarr)")
    runs, written = _build(path, out, png, 200, "auto", True)
    pages = [p for p in written if p.suffix == ".html"]
    print(f"report: {len(runs)} run{'' if len(runs) == 1 else 's'}, {len(pages)} pages; open {written[0]}")
    if png:
        print(f"report: {len(written) - len(pages)} PNG images in {written[0].parent / 'png'}")
    bad = [r for r in runs if r.status == "unreadable"]
    for r in bad:
        print(f"phasefit: warning: run {r.name}: {r.problem}", file=sys.stderr)
    return 1 if bad else 0
