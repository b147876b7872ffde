"""Rich implementation of edgekd.progress.Progress."""

from __future__ import annotations

import textwrap
from typing import Any, Dict, Optional

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from edgekd.progress import Progress as ProgressBase


def _fmt(fields: Dict[str, Any]) -> str:
    parts = []
    for k, v in fields.items():
        parts.append(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}")
    return "  ".join(parts)


class RichProgress(ProgressBase):
    def __init__(self, console: Console) -> None:
        self.console = console
        self._bar: Optional[Progress] = None
        self._task: Any = None

    def start(self, description: str) -> None:
        self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                             TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[live]}"),
                             console=self.console, transient=False)
        self._bar.start()
        self._task = self._bar.add_task(description, total=1.0, live="")

    def update(self, fraction: float, step: int, fields: Optional[Dict[str, Any]] = None) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=fraction, live=f"step {step}  " + _fmt(fields or {}))

    def message(self, text: str) -> None:
        console = self._bar.console if self._bar else self.console
        if not console.is_terminal:
            # Piped (a log, or ssh back to `bench --remote`): one plain line now. Through a live bar
            # Rich may hold such lines back or drop them when there is no terminal (seen in CI).
            lines = textwrap.wrap(f"• {text}", width=console.width, subsequent_indent="  ", break_on_hyphens=False)
            console.file.write("".join(line + "\n" for line in lines))
            console.file.flush()
            return
        console.print(f"[yellow]•[/] {text}")

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
