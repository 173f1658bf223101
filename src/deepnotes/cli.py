"""The `deepnotes` command: list, run, report, bench, and the domain commands (diffusion, video)."""
from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import __version__
from .usage import UsageError
from .usage import writable_folder as _writable_folder

__all__ = ["main", "build_parser"]

VERDICT_STYLES = {
    "reproduced": "bold green",
    "partial": "bold yellow",
    "not reproduced": "bold red",
    "error": "bold magenta",
    "not implemented": "dim",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepnotes", description="Twelve deep-learning notes, implemented, "
                                     "tested, benchmarked and reproduced.")
    parser.add_argument("--version", action="version", version=f"deepnotes {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="the twelve notes, their claims and status")

    run = sub.add_parser("run", help="run experiments and write results.json + report.html")
    run.add_argument("notes", nargs="*", metavar="NOTE", help="note slugs (default: all)")
    run.add_argument("--scale", choices=["quick", "full"], default="quick")
    run.add_argument("--out", type=Path, default=None, help="output folder (default: runs/<timestamp>)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                     help="run the notes that support it on this device (the others say they ran on the CPU)")
    run.add_argument("--resume", type=Path, default=None, metavar="DIR",
                     help="continue the run in DIR: notes finished there at the same scale, seed and commit "
                          "are kept, the rest run (DIR is also the output folder)")
    cache = run.add_mutually_exclusive_group()
    cache.add_argument("--cache", type=Path, default=None, metavar="DIR",
                       help="artifact store of trained models shared between notes and runs "
                            "(default: ~/.cache/deepnotes/artifacts)")
    cache.add_argument("--no-cache", action="store_true", help="retrain every shared model (kept in the run folder)")
    run.add_argument("--quiet", action="store_true", help="no progress display")

    report = sub.add_parser("report", help="rebuild report.html from DIR/results.json")
    report.add_argument("dir", type=Path)

    bench = sub.add_parser("bench", help="peer benchmarks from benchmarks/")
    bench.add_argument("names", nargs="*", metavar="NAME")
    bench.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke test")
    bench.add_argument("--out", type=Path, default=None, help="folder for NAME.json (default: benchmarks/results)")

    from .diffusion.cli import add_parser as add_diffusion_parser

    add_diffusion_parser(sub)
    from .video.cli import add_parser as add_video_parser

    add_video_parser(sub)
    from .medusa.cli import add_parser as add_medusa_parser

    add_medusa_parser(sub)
    from .lm.cli import add_parser as add_lm_parser

    add_lm_parser(sub)
    return parser


def _cmd_list(args, console: Console) -> int:
    from .experiments import NOTES, REGISTRY

    table = Table(title="deepnotes: the twelve notes")
    for col in ("#", "slug", "status", "budget s"):
        table.add_column(col, no_wrap=True)
    table.add_column("title", ratio=1)
    table.add_column("claim", ratio=3)
    for note in NOTES:
        status = "implemented" if note.slug in REGISTRY else "not yet"
        table.add_row(str(note.number), note.slug,
                      f"[green]{status}[/]" if note.slug in REGISTRY else f"[dim]{status}[/]",
                      f"{note.budget_seconds:g}", note.title, note.claim)
    table.caption = "budget: wall-clock seconds at quick scale on 2 cores"
    console.print(table)
    return 0


class _RichCallbacks:
    """Overall bar plus one bar per experiment."""

    def __init__(self, bar: Progress, total: int):
        self.bar = bar
        self.overall = bar.add_task("all experiments", total=max(total, 1))
        self.tasks: dict[str, int] = {}

    def start(self, slug, index, total):
        self.tasks[slug] = self.bar.add_task(slug, total=1.0)

    def progress(self, slug, fraction, message):
        if slug in self.tasks:
            self.bar.update(self.tasks[slug], completed=min(max(fraction, 0.0), 1.0),
                            description=f"{slug}: {message}" if message else slug)

    def done(self, slug, note):
        if slug in self.tasks:  # notes kept by --resume were never started
            self.bar.update(self.tasks[slug], completed=1.0, description=f"{slug}: {note['verdict']}")
            self.bar.advance(self.overall)


def _summary_table(doc: dict) -> Table:
    from .report.html import format_number, key_numbers

    from .report.html import seconds_vs_budget

    table = Table(title="deepnotes run summary")
    table.add_column("note", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    table.add_column("key numbers (measured op threshold)", ratio=1)
    table.add_column("device", no_wrap=True)
    table.add_column("seeds", no_wrap=True, justify="right")
    table.add_column("s / budget", no_wrap=True, justify="right")
    for n in doc["notes"]:
        style = VERDICT_STYLES.get(n["verdict"], "")
        device = n.get("device", "—") if n["status"] != "not implemented" else "—"
        table.add_row(n["slug"], f"[{style}]{n['verdict']}[/]", key_numbers(n), device,
                      format_number(n.get("seeds")), seconds_vs_budget(n, doc["scale"]))
    table.caption = f"total {format_number(doc.get('seconds'))} s"
    return table


def _cmd_run(args, console: Console) -> int:
    from .experiments import NOTES_BY_SLUG, REGISTRY
    from .experiments.runner import ResumeError, run_notes

    unknown = [s for s in args.notes if s not in NOTES_BY_SLUG]
    if unknown:
        raise UsageError(f"unknown note(s): {', '.join(unknown)}\nvalid notes: {', '.join(NOTES_BY_SLUG)}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device is available here; use --device cpu")
    if args.resume is not None:
        if args.out is not None and args.out.resolve() != args.resume.resolve():
            raise UsageError(f"--resume {args.resume} writes into that folder; --out {args.out} names another")
        if not args.resume.is_dir():
            raise UsageError(f"--resume: {args.resume} is not a folder of an earlier run")
        out = _writable_folder(args.resume, "--resume")
    else:
        out = _writable_folder(args.out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S"), "--out")
    slugs = args.notes or None
    n_runnable = len([s for s in (slugs or NOTES_BY_SLUG) if s in REGISTRY])
    options = dict(registry=REGISTRY, scale=args.scale, seed=args.seed, device=args.device, out_dir=out,
                   cache_dir=args.cache, use_cache=not args.no_cache, resume=args.resume is not None)

    show_progress = not args.quiet and console.is_terminal
    try:
        if show_progress:
            progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                                TimeElapsedColumn(), console=console, transient=False)
            with progress:
                doc = run_notes(slugs, callbacks=_RichCallbacks(progress, n_runnable), **options)
        else:
            doc = run_notes(slugs, **options)
    except ResumeError as err:
        raise UsageError(str(err)) from None
    console.print(_summary_table(doc))
    console.print(f"results: {out / 'results.json'}\nreport:  {out / 'report.html'}")
    return 1 if any(n["status"] == "error" for n in doc["notes"]) else 0


def _cmd_report(args, console: Console) -> int:
    from .report import load_results, write_report

    if not (args.dir / "results.json").is_file():
        raise UsageError(f"no results.json in {args.dir}")
    try:
        doc = load_results(args.dir)
    except ValueError as err:
        raise UsageError(str(err)) from None
    _writable_folder(args.dir, "DIR")
    console.print(f"report: {write_report(doc, args.dir)}")
    return 0


def _cmd_bench(args, console: Console) -> int:
    from .bench import BENCHMARKS, run_benchmark

    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        raise UsageError(f"unknown benchmark(s): {', '.join(unknown)}\nvalid benchmarks: "
                         f"{', '.join(BENCHMARKS) or '(none registered)'}")
    names = args.names or list(BENCHMARKS)
    if not names:
        console.print("no benchmarks are registered yet")
        return 0
    failed = 0
    for name in names:
        console.rule(f"benchmark {name}")
        out = args.out / f"{name}.json" if args.out else None
        failed += run_benchmark(name, quick=args.quick, out=out) != 0
    return 1 if failed else 0


def _cmd_diffusion(args, console: Console) -> int:
    from .diffusion.cli import run

    return run(args, console)


def _cmd_video(args, console: Console) -> int:
    from .video.cli import run

    return run(args, console)


def _cmd_medusa(args, console: Console) -> int:
    from .medusa.cli import run

    return run(args, console)


def _cmd_lm(args, console: Console) -> int:
    from .lm.cli import run

    return run(args, console)


COMMANDS = {"list": _cmd_list, "run": _cmd_run, "report": _cmd_report, "bench": _cmd_bench,
            "diffusion": _cmd_diffusion, "video": _cmd_video, "medusa": _cmd_medusa,
            "lm": _cmd_lm}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    try:
        return COMMANDS[args.command](args, console)
    except UsageError as err:
        Console(stderr=True, soft_wrap=True).print(f"[red]deepnotes {args.command}:[/] {err}", highlight=False)
        return 2
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
