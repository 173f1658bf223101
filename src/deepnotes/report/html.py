"""report.html: one static file, figures embedded, no external assets."""
from __future__ import annotations

import base64
import html
import os
from pathlib import Path

from .environment import REPO_ROOT

__all__ = ["render_report", "write_report", "format_number", "key_numbers"]

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


def key_numbers(note: dict, limit: int = 3) -> str:
    """A short 'measured op threshold' list for the summary table."""
    parts = [f"{format_number(c['value'])} {c['op']} {format_number(c['threshold'])}"
             for c in note.get("checks", [])[:limit]]
    more = len(note.get("checks", [])) - limit
    if more > 0:
        parts.append(f"(+{more} more)")
    return "; ".join(parts)


def _badge(verdict: str) -> str:
    colour = VERDICT_COLOURS.get(verdict, "#6e7781")
    return f'<span class="verdict" style="background:{colour}">{html.escape(verdict)}</span>'


def _embed(run_dir: Path, rel: str) -> str:
    path = run_dir / rel
    if not path.is_file():
        return f"<em>figure missing: {html.escape(rel)}</em>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(rel)}" src="data:image/png;base64,{data}">'


def _docs_link(run_dir: Path, docs: str) -> str:
    target = REPO_ROOT / docs
    if target.is_file():
        href = os.path.relpath(target, run_dir.resolve())
        return f'<a href="{html.escape(href)}">{html.escape(docs)}</a>'
    return f"<code>{html.escape(docs)}</code>"


def _table(columns, rows) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="num">{format_number(v)}</td>' if isinstance(v, (int, float)) and not isinstance(v, bool)
            else f"<td>{html.escape(format_number(v))}</td>" for v in row) + "</tr>"
        for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(note: dict, run_dir: Path) -> str:
    out = [f'<h2 id="{note["slug"]}">{note["number"]}. {html.escape(note["title"])} {_badge(note["verdict"])}</h2>',
           f'<p class="claim"><strong>Claim.</strong> {html.escape(note["claim"])}</p>']
    if note["status"] == "not implemented":
        out.append("<p>This note's experiment is not implemented yet.</p>")
        return "\n".join(out)
    if note["status"] == "error":
        out.append(f'<p>The experiment raised an error after {format_number(note["seconds"])} s:</p>'
                   f'<pre class="error">{html.escape(note["error"] or "")}</pre>')
    if note.get("summary"):
        out.append(f"<p>{html.escape(note['summary'])}</p>")
    if note["checks"]:
        rows = "".join(
            f"<tr><td>{html.escape(c['name'])}</td><td class=\"num\">{format_number(c['value'])}</td>"
            f"<td>{html.escape(c['op'])}</td><td class=\"num\">{format_number(c['threshold'])}</td>"
            f"<td class=\"{'pass' if c['passed'] else 'fail'}\">{'pass' if c['passed'] else 'fail'}</td></tr>"
            for c in note["checks"])
        out.append("<table><thead><tr><th>measured against the claim</th><th>value</th><th></th>"
                   f"<th>threshold</th><th>result</th></tr></thead><tbody>{rows}</tbody></table>")
    for table in note["tables"]:
        out.append(f"<p><strong>{html.escape(table['title'])}</strong></p>{_table(table['columns'], table['rows'])}")
    for fig in note["figures"]:
        out.append(f"<figure>{_embed(run_dir, fig['path'])}<figcaption>{html.escape(fig['caption'])}</figcaption>"
                   "</figure>")
    if note["metrics"]:
        out.append("<details><summary>All metrics</summary>"
                   + _table(["metric", "value"], sorted(note["metrics"].items())) + "</details>")
    out.append(f"<p>Seconds: {format_number(note['seconds'])}. Notes page: {_docs_link(run_dir, note['docs'])}.</p>")
    return "\n".join(out)


def render_report(doc: dict, run_dir: Path) -> str:
    run_dir = Path(run_dir)
    env = doc["environment"]
    summary_rows = "".join(
        f'<tr><td class="num">{n["number"]}</td><td><a href="#{n["slug"]}">{html.escape(n["title"])}</a>'
        f'<br><code>{n["slug"]}</code></td><td>{_badge(n["verdict"])}</td>'
        f"<td>{html.escape(key_numbers(n))}</td><td class=\"num\">{format_number(n['seconds'])}</td></tr>"
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
device {doc["device"]} · {html.escape(tally)}</p>
<table><thead><tr><th>#</th><th>note</th><th>verdict</th><th>key numbers (measured op threshold)</th>
<th>seconds</th></tr></thead><tbody>{summary_rows}</tbody></table>
<details><summary>Environment</summary>{env_rows}</details>
{"".join(_section(n, run_dir) for n in doc["notes"])}
</body></html>
"""


def write_report(doc: dict, run_dir: Path) -> Path:
    path = Path(run_dir) / "report.html"
    path.write_text(render_report(doc, run_dir), encoding="utf-8")
    return path
