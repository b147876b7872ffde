"""The small interface long-running library code reports through; the CLI draws it with Rich."""

from __future__ import annotations

from typing import Any, Dict, Optional


class Progress:
    """Silent by default. `fraction` is in [0, 1]; `fields` are short live values (losses, accuracy)."""

    def start(self, description: str) -> None:
        pass

    def update(self, fraction: float, step: int, fields: Optional[Dict[str, Any]] = None) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def stop(self) -> None:
        pass


class RecordingProgress(Progress):
    """Keeps messages; handy for scripts and tests."""

    def __init__(self) -> None:
        self.messages: list = []
        self.last: Dict[str, Any] = {}

    def update(self, fraction: float, step: int, fields: Optional[Dict[str, Any]] = None) -> None:
        self.last = {"fraction": fraction, "step": step, **(fields or {})}

    def message(self, text: str) -> None:
        self.messages.append(text)
