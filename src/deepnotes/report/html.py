"""report.html: one static file, figures embedded, no external assets."""
from __future__ import annotations

import base64
import html
from pathlib import Path

from .environment import REPO_ROOT

__all__ = ["render_report", "write_report", "format_number", "key_numbers", "seconds_vs_budget", "docs_html"]

VERDICT_COLOURS = {
    "reproduced": "#1a7f37",
    "partial": "#b58100",
    "not reproduced": "#cf222e",
    "error": "#8250df",
    "not implemented": "#6e7781",
}

CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328;
       max-width: 1100px; margin: 2em auto; padding: 0 1.2em; }
h1 { margin-bottom: 0.1em; } h2 { border-bottom: 1px solid #d0d7de; padding-bottom: 0.2em; margin-top: 2em; }
.sub { color: #59636e; margin-top: 0; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 14px; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.verdict { display: inline-block; color: white; border-radius: 10px; padding: 0 9px; font-size: 13px;
           white-space: nowrap; }
.pass { color: #1a7f37; font-weight: 600; } .fail { color: #cf222e; font-weight: 600; }
.claim { background: #f6f8fa; border-left: 4px solid #0969da; padding: 0.5em 0.9em; }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0; max-width: 100%; vertical-align: top; }
figure img { max-width: 520px; width: 100%; border: 1px solid #d0d7de; }
figcaption { font-size: 13px; color: #59636e; max-width: 520px; }
pre.error { background: #fff0f0; border: 1px solid #f5c2c7; padding: 0.7em; white-space: pre-wrap; }
details { margin: 0.5em 0; } code { font-size: 13px; }
.over { color: #cf222e; } .docs { border-left: 3px solid #d0d7de; padding-left: 1em; }
"""


def format_number(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1e5 or abs(value) < 1e-3:
            return f"{value:.3e}"
        return f"{value:.4g}"
    return str(value)


def _interval_text(interval: dict | None) -> str:
    if not interval:
        return ""
    return (f"mean {format_number(interval['mean'])} [{format_number(interval['low'])}, "
            f"{format_number(interval['high'])}], n={interval['n']}")


def key_numbers(note: dict, limit: int = 3) -> str:
    """A short 'label: measured op threshold' list for the summary table."""
    parts = []
    for c in note.get("checks", [])[:limit]:
        text = f"{c['label']}: " if c.get("label") else ""
        text += f"{format_number(c['value'])} {c['op']} {format_number(c['threshold'])}"
        if c.get("interval"):
            text += f" (n={c['interval']['n']})"
        parts.append(text)
    more = len(note.get("checks", [])) - limit
    if more > 0:
        parts.append(f"(+{more} more)")
    return "; ".join(parts)


def seconds_vs_budget(note: dict, scale: str) -> str:
    """'12.3 / 15' at quick scale (the budgets are quick-scale budgets), plain seconds otherwise."""
    seconds = format_number(note.get("seconds"))
    budget = note.get("budget_seconds")
    if scale != "quick" or budget is None or note.get("seconds") is None:
        return seconds
    return f"{seconds} / {format_number(budget)}"


def _badge(verdict: str) -> str:
    colour = VERDICT_COLOURS.get(verdict, "#6e7781")
    return f'<span class="verdict" style="background:{colour}">{html.escape(verdict)}</span>'


def _embed(run_dir: Path, rel: str) -> str:
    path = run_dir / rel
    if not path.is_file():
        return f"<em>figure missing: {html.escape(rel)}</em>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(rel)}" src="data:image/png;base64,{data}">'


def docs_html(docs: str) -> str:
    """The note's docs page: a link to the file and its text rendered in place, so the report
    reads the same from any folder (the run folder has no docs/ beside it)."""
    target = REPO_ROOT / docs
    if not target.is_file():
        return f"<p>Notes page: <code>{html.escape(docs)}</code> (not found beside this installation).</p>"
    try:
        from markdown_it import MarkdownIt

        body = MarkdownIt("commonmark", {"html": False}).enable("table").render(target.read_text(encoding="utf-8"))
    except ImportError:  # markdown-it-py comes with rich; plain text if it is missing
        body = f"<pre>{html.escape(target.read_text(encoding='utf-8'))}</pre>"
    link = f'<a href="{html.escape(target.resolve().as_uri())}">{html.escape(docs)}</a>'
    return (f"<details><summary>Notes page: {html.escape(docs)}</summary><p>{link}</p>"
            f'<div class="docs">{body}</div></details>')


def _table(columns, rows) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="num">{format_number(v)}</td>' if isinstance(v, (int, float)) and not isinstance(v, bool)
            else f"<td>{html.escape(format_number(v))}</td>" for v in row) + "</tr>"
        for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _run_facts(note: dict, doc: dict) -> str:
    """Device, seconds against budget and seeds of one note, in one line."""
    device = note.get("device", doc["device"])
    where = html.escape(device)
    if device != doc["device"]:
        where += f" (CPU only: --device {html.escape(doc['device'])} was asked, this note does not support it)"
    seconds = html.escape(seconds_vs_budget(note, doc["scale"]))
    over = (doc["scale"] == "quick" and note.get("seconds") is not None and note.get("budget_seconds")
            and note["seconds"] > note["budget_seconds"])
    seconds_html = f'<span class="over">{seconds} (over budget)</span>' if over else seconds
    seeds = note.get("seeds")
    seeds_html = f"{seeds} seed{'s' if seeds != 1 else ''}" if seeds else "—"
    return (f"<p>Device: <strong>{where}</strong> · seconds{' / quick budget' if doc['scale'] == 'quick' else ''}: "
            f"{seconds_html} · verdict decided over {seeds_html}.</p>")


def _section(note: dict, run_dir: Path, doc: dict) -> str:
    out = [f'<h2 id="{note["slug"]}">{note["number"]}. {html.escape(note["title"])} {_badge(note["verdict"])}</h2>',
           f'<p class="claim"><strong>Claim.</strong> {html.escape(note["claim"])}</p>']
    if note["status"] == "not implemented":
        out.append("<p>This note's experiment is not implemented yet.</p>")
        return "\n".join(out)
    out.append(_run_facts(note, doc))
    if note["status"] == "error":
        out.append(f'<p>The experiment failed after {format_number(note["seconds"])} s:</p>'
                   f'<pre class="error">{html.escape(note["error"] or "")}</pre>')
    if note.get("summary"):
        out.append(f"<p>{html.escape(note['summary'])}</p>")
    if note["checks"]:
        rows = "".join(
            f"<tr><td>{html.escape(c.get('label') or '')}</td><td>{html.escape(c['name'])}</td>"
            f"<td class=\"num\">{format_number(c['value'])}</td>"
            f"<td>{html.escape(c['op'])}</td><td class=\"num\">{format_number(c['threshold'])}</td>"
            f"<td>{html.escape(_interval_text(c.get('interval')))}</td>"
            f"<td class=\"{'pass' if c['passed'] else 'fail'}\">{'pass' if c['passed'] else 'fail'}</td></tr>"
            for c in note["checks"])
        out.append("<table><thead><tr><th>check</th><th>measured against the claim</th><th>value</th><th></th>"
                   "<th>threshold</th><th>over seeds: mean [95% CI]</th><th>result</th></tr></thead>"
                   f"<tbody>{rows}</tbody></table>")
    for table in note["tables"]:
        out.append(f"<p><strong>{html.escape(table['title'])}</strong></p>{_table(table['columns'], table['rows'])}")
    for fig in note["figures"]:
        out.append(f"<figure>{_embed(run_dir, fig['path'])}<figcaption>{html.escape(fig['caption'])}</figcaption>"
                   "</figure>")
    if note["metrics"]:
        out.append("<details><summary>All metrics</summary>"
                   + _table(["metric", "value"], sorted(note["metrics"].items())) + "</details>")
    out.append(docs_html(note["docs"]))
    return "\n".join(out)


def render_report(doc: dict, run_dir: Path) -> str:
    run_dir = Path(run_dir)
    env = doc["environment"]
    summary_rows = "".join(
        f'<tr><td class="num">{n["number"]}</td><td><a href="#{n["slug"]}">{html.escape(n["title"])}</a>'
        f'<br><code>{n["slug"]}</code></td><td>{_badge(n["verdict"])}</td>'
        f"<td>{html.escape(key_numbers(n))}</td>"
        f"<td>{html.escape(n.get('device', '—') if n['status'] != 'not implemented' else '—')}</td>"
        f"<td class=\"num\">{format_number(n.get('seeds'))}</td>"
        f"<td class=\"num\">{html.escape(seconds_vs_budget(n, doc['scale']))}</td></tr>"
        for n in doc["notes"])
    env_rows = _table(["", ""], [[k, str(v)] for k, v in env.items()])
    counts = {}
    for n in doc["notes"]:
        counts[n["verdict"]] = counts.get(n["verdict"], 0) + 1
    tally = ", ".join(f"{v} {k}" for k, v in counts.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>deepnotes report</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body>
<h1>deepnotes report</h1>
<p class="sub">{html.escape(doc["created"])} · scale <strong>{doc["scale"]}</strong> · seed {doc["seed"]} ·
device asked {doc["device"]} · {html.escape(tally)}</p>
<table><thead><tr><th>#</th><th>note</th><th>verdict</th><th>key numbers (check: measured op threshold)</th>
<th>device</th><th>seeds</th><th>seconds{" / budget" if doc["scale"] == "quick" else ""}</th></tr></thead>
<tbody>{summary_rows}</tbody></table>
<p class="sub">Total {format_number(doc.get("seconds"))} s.</p>
<details><summary>Environment</summary>{env_rows}</details>
{"".join(_section(n, run_dir, doc) for n in doc["notes"])}
</body></html>
"""


def write_report(doc: dict, run_dir: Path) -> Path:
    path = Path(run_dir) / "report.html"
    path.write_text(render_report(doc, run_dir), encoding="utf-8")
    return path
