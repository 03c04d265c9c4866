"""The run report: one offline HTML file with the run's figures, written to ``runs/<run>/report.html``.

    distill report runs/quickstart          # also written at the end of `distill run`

It reads only what the stages left on disk, never their in-memory state:

- ``NN-<stage>/manifest.json``: rows in/out, rejections by reason, tokens, wall time, throughput;
- ``NN-generate/data`` (``completion_tokens``) and ``NN-verify/data`` + ``rejected/`` (``task``, ``passed``,
  ``teacher``): completion lengths and pass rates;
- ``loop/iter_<k>/metrics.json`` (``{"iteration": k, "val_accuracy": ...}``): the PGKD validation curve;
- ``eval*.json`` at the run's top level (``distill eval`` output: ``pass@1``, or ``val_accuracy`` /
  ``accuracy``): the student before/after, shown when the run has no PGKD iterations.

Every figure is always present (a missing input gives a figure that says what is missing), as a matplotlib
PNG embedded in base64, so the file opens anywhere without network.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from pipeline import store
from pipeline.errors import UserError

REPORT = "report.html"
# id -> caption. Tests and readers rely on these ids (<img id=...>).
FIGURES = {
    "fig-rows": "Rows kept and rejected per stage and reason",
    "fig-lengths": "Completion length (tokens)",
    "fig-pass-rate": "Verifier pass rate per task",
    "fig-validation": "Validation accuracy per PGKD iteration",
    "fig-throughput": "Throughput per stage",
}
KEPT = "#3a8c4f"


# --------------------------------------------------------------------------- reading a run


def stage_manifests(run_dir: str | Path) -> list[tuple[Path, dict]]:
    """(folder, manifest) of every completed stage `NN-<stage>/` of a run, in order."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a run folder; pass runs/<name> (the folder `distill run` wrote)")
    out = []
    for folder in sorted(
        p for p in run_dir.iterdir() if p.is_dir() and p.name[:2].isdigit() and "-" in p.name
    ):
        manifest = store.read_manifest(folder)
        if manifest is not None:
            out.append((folder, manifest))
    if not out:
        raise UserError(
            f"{run_dir} holds no finished stage (no NN-<stage>/manifest.json); run `distill run` first"
        )
    return out


def last_stage(stages: list[tuple[Path, dict]], name: str) -> tuple[Path, dict] | None:
    found = [s for s in stages if s[1].get("stage") == name]
    return found[-1] if found else None


def read_rows(folder: Path, columns: list[str], rejected: bool = True) -> pa.Table | None:
    """The given columns (those present) of a stage's data/ and, optionally, rejected/ rows."""
    tables = []
    for sub in ("data", "rejected") if rejected else ("data",):
        if (folder / sub).is_dir() and any((folder / sub).glob("data-*.arrow")):
            t = store.load_table(folder / sub)
            tables.append(t.select([c for c in columns if c in t.column_names]))
    tables = [t for t in tables if t.num_columns]
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="permissive")


def pass_counts(verify_dir: Path, by: str = "task") -> dict[str, Counter]:
    """{task (or teacher): Counter(passed=, failed=, undecided=)} over the verify stage's data + rejected rows."""
    rows = read_rows(verify_dir, ["task", "teacher", "passed", "reject_reason"])
    out: dict[str, Counter] = defaultdict(Counter)
    if rows is None or "passed" not in rows.column_names:
        return {}
    keys = rows.column(by).to_pylist() if by in rows.column_names else ["all"] * rows.num_rows
    reasons = (
        rows.column("reject_reason").to_pylist()
        if "reject_reason" in rows.column_names
        else [None] * rows.num_rows
    )
    for key, passed, reason in zip(keys, rows.column("passed").to_pylist(), reasons, strict=True):
        if reason in ("contaminated", "near_duplicate_prompt"):
            continue  # never shown to a verifier
        out[key or "unknown"][{True: "passed", False: "failed", None: "undecided"}[passed]] += 1
    return dict(sorted(out.items()))


def loop_metrics(run_dir: Path) -> list[dict]:
    """PGKD iterations: runs/<run>/loop/iter_<k>/metrics.json, sorted by iteration."""
    out = []
    for path in sorted((run_dir / "loop").glob("iter_*/metrics.json")):
        try:
            m = json.loads(path.read_text())
        except ValueError:
            continue
        if isinstance(m, dict) and "val_accuracy" in m:
            m.setdefault("iteration", int(path.parent.name.split("_")[-1]))
            out.append(m)
    return sorted(out, key=lambda m: m["iteration"])


def eval_results(run_dir: Path) -> list[tuple[str, float]]:
    """(label, accuracy) from runs/<run>/eval*.json (e.g. eval_before.json, eval_after.json)."""
    out = []
    for path in sorted(run_dir.glob("eval*.json")):
        try:
            m = json.loads(path.read_text())
        except ValueError:
            continue
        for key in ("pass@1", "val_accuracy", "accuracy"):
            if isinstance(m, dict) and isinstance(m.get(key), (int, float)):
                label = path.stem.removeprefix("eval").strip("_-") or "eval"
                out.append((label, float(m[key])))
                break
    return out


# --------------------------------------------------------------------------- figures


def _figure(width: float = 10, height: float = 4):
    from matplotlib.figure import Figure  # no pyplot: no global backend state, works headless

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode()


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=13, color="#555", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def fig_rows(stages: list[tuple[Path, dict]]):
    """Stacked bars, one per stage: rows kept, then rows rejected (or skipped by export) per reason."""
    bars = []
    for folder, m in stages:
        reasons = dict(m.get("rejected_by_reason") or {})
        reasons.update({f"skipped: {k}": v for k, v in (m.get("skipped") or {}).items()})
        bars.append((folder.name, int(m.get("rows_out") or 0), reasons))
    all_reasons = sorted({r for _, _, reasons in bars for r in reasons})
    fig = _figure(10, 1.2 + 0.7 * len(bars))
    ax = fig.add_subplot()
    cmap = _colors(len(all_reasons))
    names = [b[0] for b in bars][::-1]
    left = [0] * len(bars)
    kept = [b[1] for b in bars][::-1]
    ax.barh(names, kept, color=KEPT, label="kept")
    left = kept[:]
    for reason, color in zip(all_reasons, cmap, strict=True):
        values = [b[2].get(reason, 0) for b in bars][::-1]
        ax.barh(names, values, left=left, color=color, label=reason)
        left = [a + b for a, b in zip(left, values, strict=True)]
    for y, (k, total) in enumerate(zip(kept, left, strict=True)):
        ax.text(total, y, f"  {k} kept / {total - k} rejected", va="center", fontsize=9)
    ax.set_xlim(0, max(left + [1]) * 1.35)
    ax.set_xlabel("rows")
    ax.legend(loc="upper right", fontsize=8, ncols=2)
    ax.set_title(FIGURES["fig-rows"])
    return fig


# Rejection reasons: warm and grey tones, never the green of "kept".
REASON_COLORS = ["#e07b39", "#c0392b", "#f2b880", "#8e44ad", "#7f8c8d", "#d4ac0d", "#e6a0a0", "#2e86c1"]


def _colors(n: int) -> list[str]:
    return [REASON_COLORS[i % len(REASON_COLORS)] for i in range(n)]


def fig_lengths(stages: list[tuple[Path, dict]]):
    fig = _figure(10, 3.8)
    ax = fig.add_subplot()
    gen = last_stage(stages, "generate")
    ver = last_stage(stages, "verify")
    series = []
    if gen is not None:
        t = read_rows(gen[0], ["completion_tokens"], rejected=False)
        if t is not None and "completion_tokens" in t.column_names:
            series.append(
                ("all generated", [v for v in t.column("completion_tokens").to_pylist() if v is not None])
            )
    if ver is not None:
        t = read_rows(ver[0], ["completion_tokens"], rejected=False)
        if t is not None and "completion_tokens" in t.column_names:
            series.append(
                ("kept by verify", [v for v in t.column("completion_tokens").to_pylist() if v is not None])
            )
    series = [(label, values) for label, values in series if values]
    if not series:
        _note(ax, "no completions in this run (no generate stage)")
    else:
        top = max(max(v) for _, v in series)
        bins = list(range(0, top + max(1, top // 40) + 1, max(1, top // 40)))
        # Opaque, kept drawn over all: kept answers are a subset, so the blue above green is what verify dropped.
        for (label, values), color in zip(series, ["#8aa6c8", KEPT], strict=False):
            ax.hist(values, bins=bins, color=color, label=f"{label} (n={len(values)})")
        ax.set_xlabel("completion tokens")
        ax.set_ylabel("completions")
        ax.legend()
    ax.set_title(FIGURES["fig-lengths"])
    return fig


def fig_pass_rate(stages: list[tuple[Path, dict]]):
    fig = _figure(10, 3.8)
    ax = fig.add_subplot()
    ver = last_stage(stages, "verify")
    counts = pass_counts(ver[0]) if ver is not None else {}
    if not counts:
        _note(ax, "no verifier verdicts in this run (no verify stage)")
    else:
        tasks = list(counts)
        rates = []
        for task in tasks:
            c = counts[task]
            decided = c["passed"] + c["failed"]
            rates.append(c["passed"] / decided if decided else 0.0)
        ax.bar(tasks, rates, color=KEPT, width=0.5)
        for x, task in enumerate(tasks):
            c = counts[task]
            ax.text(
                x,
                rates[x] + 0.02,
                f"{rates[x]:.0%}  ({c['passed']}/{c['passed'] + c['failed']}; {c['undecided']} undecided)",
                ha="center",
                fontsize=9,
            )
        ax.set_ylim(0, 1.15)
        ax.set_ylabel("pass rate (decided samples)")
    ax.set_title(FIGURES["fig-pass-rate"])
    return fig


def fig_validation(run_dir: Path):
    fig = _figure(10, 3.8)
    ax = fig.add_subplot()
    iters = loop_metrics(run_dir)
    evals = eval_results(run_dir)
    if iters:
        xs = [m["iteration"] for m in iters]
        ys = [m["val_accuracy"] for m in iters]
        ax.plot(xs, ys, marker="o", color=KEPT, label="val accuracy")
        best = max(range(len(ys)), key=ys.__getitem__)
        ax.annotate(f"best {ys[best]:.3f}", (xs[best], ys[best]), textcoords="offset points", xytext=(0, 8))
        ax.set_xticks(xs)
        ax.set_xlabel("PGKD iteration")
        ax.set_ylabel("validation accuracy")
        ax.set_title(FIGURES["fig-validation"])
    elif evals:
        labels = [label for label, _ in evals]
        values = [v for _, v in evals]
        ax.bar(labels, values, color="#8aa6c8", width=0.5)
        for x, v in enumerate(values):
            ax.text(x, v + 0.02, f"{v:.3f}", ha="center")
        ax.set_ylim(0, 1.1)
        ax.set_ylabel("pass@1")
        ax.set_title("No PGKD iterations in this run; student evaluations (eval*.json)")
    else:
        _note(ax, "no PGKD iterations in this run (and no eval*.json)")
        ax.set_title(FIGURES["fig-validation"])
    return fig


def fig_throughput(stages: list[tuple[Path, dict]]):
    """Input rows per second of every stage (log scale: generation is orders slower than filtering)."""
    fig = _figure(10, 3.8)
    rows_ax, tok_ax = fig.subplots(1, 2)
    names = [folder.name for folder, _ in stages][::-1]
    rows_per_s = [(m.get("rows_in") or 0) / m["wall_s"] if m.get("wall_s") else 0.0 for _, m in stages][::-1]
    _labelled_bars(rows_ax, names, rows_per_s, "#8aa6c8")
    if any(rows_per_s):
        rows_ax.set_xscale("log")
    rows_ax.set_xlabel("input rows / s (log scale)")
    rows_ax.set_title("rows per second")
    tokens = []
    for folder, m in stages:
        by_teacher = m.get("tokens_by_teacher") or {}
        if len(by_teacher) > 1:
            tokens += [(f"{folder.name}\n{t}", v.get("tokens_per_s", 0.0)) for t, v in by_teacher.items()]
        elif m.get("tokens_per_s"):
            tokens.append((folder.name, m["tokens_per_s"]))
    if tokens:
        _labelled_bars(tok_ax, [n for n, _ in tokens][::-1], [v for _, v in tokens][::-1], KEPT)
        tok_ax.set_xlabel("completion tokens / s (wall time of the stage)")
    else:
        _note(tok_ax, "no tokens generated")
    tok_ax.set_title("generation throughput")
    fig.suptitle(FIGURES["fig-throughput"])
    return fig


def _labelled_bars(ax, names: list[str], values: list[float], color: str) -> None:
    bars = ax.barh(names, values, color=color)
    ax.bar_label(bars, labels=[f" {v:,.0f}" if v >= 100 else f" {v:.3g}" for v in values], fontsize=9)
    ax.margins(x=0.25)


# --------------------------------------------------------------------------- the page

STYLE = """
body { font-family: DejaVu Sans, Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1100px;
       color: #222; background: #fff; }
h1 { margin-bottom: 4px; } .muted { color: #666; font-size: 90%; }
table { border-collapse: collapse; margin: 12px 0 24px; font-size: 90%; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f0f3f7; } figure { margin: 24px 0; } img { max-width: 100%; border: 1px solid #ddd; }
code { background: #f5f5f5; padding: 1px 4px; }
"""


def _summary_table(stages: list[tuple[Path, dict]]) -> str:
    head = (
        "<tr><th>stage</th><th>rows in</th><th>rows out</th><th>rejected</th><th>prompt tokens</th>"
        "<th>completion tokens</th><th>wall s</th><th>tokens/s</th><th>fingerprint</th></tr>"
    )
    body = []
    for folder, m in stages:
        tokens = m.get("tokens") or {}
        rejected = sum((m.get("rejected_by_reason") or {}).values()) + sum((m.get("skipped") or {}).values())
        cells = [
            folder.name,
            m.get("rows_in", ""),
            m.get("rows_out", ""),
            rejected,
            tokens.get("prompt", 0),
            tokens.get("completion", 0),
            m.get("wall_s", ""),
            m.get("tokens_per_s", ""),
            f"<code>{html.escape(str(m.get('fingerprint', ''))[:12])}</code>",
        ]
        body.append(
            "<tr>"
            + "".join(
                f"<td>{c if i == len(cells) - 1 else html.escape(str(c))}</td>" for i, c in enumerate(cells)
            )
            + "</tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


def _models(stages: list[tuple[Path, dict]]) -> str:
    items = []
    for folder, m in stages:
        for label, ident in (m.get("models") or {}).items():
            identity = ident.get("identity", {}) if isinstance(ident, dict) else {}
            what = (
                f"{identity['hub_id']}@{identity.get('revision')}"
                if "hub_id" in identity
                else f"weights sha256 {str(identity.get('sha256', ''))[:16]}"
                if "sha256" in identity
                else str(ident.get("model", ""))
                if isinstance(ident, dict)
                else str(ident)
            )
            engine = ident.get("engine", "") if isinstance(ident, dict) else ""
            items.append(
                f"<li>{html.escape(folder.name)}: <b>{html.escape(label)}</b> "
                f"({html.escape(engine)}) <code>{html.escape(what)}</code></li>"
            )
    return f"<ul>{''.join(items)}</ul>" if items else "<p class=muted>No models recorded.</p>"


def render_report(run_dir: str | Path) -> str:
    """The report's HTML text (see the module docstring for what it reads)."""
    run_dir = Path(run_dir)
    stages = stage_manifests(run_dir)
    figures = {
        "fig-rows": fig_rows(stages),
        "fig-lengths": fig_lengths(stages),
        "fig-pass-rate": fig_pass_rate(stages),
        "fig-validation": fig_validation(run_dir),
        "fig-throughput": fig_throughput(stages),
    }
    blocks = []
    for fig_id, fig in figures.items():
        caption = html.escape(FIGURES[fig_id])
        blocks.append(
            f'<figure><img id="{fig_id}" alt="{caption}" src="data:image/png;base64,{_png(fig)}">'
            f"<figcaption class=muted>{caption}</figcaption></figure>"
        )
    card = run_dir / "card" / "README.md"
    card_line = (
        f"<p>Data card: <code>{html.escape(str(card))}</code></p>"
        if card.is_file()
        else "<p class=muted>No data card yet: <code>distill card RUN_DIR</code> writes one.</p>"
    )
    generated = datetime.now(UTC).isoformat(timespec="seconds")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>distill run report: {html.escape(run_dir.name)}</title>
<style>{STYLE}</style></head>
<body>
<h1>Run report: {html.escape(run_dir.name)}</h1>
<p class=muted>{html.escape(str(run_dir))}, written {generated}</p>
<h2>Stages</h2>
{_summary_table(stages)}
<h2>Models</h2>
{_models(stages)}
{card_line}
<h2>Figures</h2>
{"".join(blocks)}
</body></html>
"""


def write_report(run_dir: str | Path) -> Path:
    """Write runs/<run>/report.html (atomically) and return its path."""
    run_dir = Path(run_dir)
    text = render_report(run_dir)
    path = run_dir / REPORT
    tmp = path.with_name(f".{REPORT}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
