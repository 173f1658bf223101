"""The training progress bar: rich on a terminal, nothing elsewhere."""
from __future__ import annotations

__all__ = ["progress_bar"]


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def advance(self, loss: float, skipped: int = 0) -> None:
        pass


class _RichBar(_NoBar):
    def __init__(self, total: int, done: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[skipped]}"),
                                 TimeRemainingColumn())
        self.task = self.progress.add_task("train", total=total, completed=done, loss="-", skipped="")

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def advance(self, loss: float, skipped: int = 0) -> None:
        """One step done; `skipped`: steps the fp16 loss scaler skipped so far (shown once there are any)."""
        self.progress.update(self.task, advance=1, loss=f"{loss:.4f}",
                             skipped=f"skipped {skipped}" if skipped else "")


def progress_bar(show: bool, total: int, done: int):
    return _RichBar(total, done) if show else _NoBar()
