"""What a local sweep says while it runs: its own lines, each trial's stage lines, and live counters.

Stages report to a progress file per trial (``sftlab.progress``); a thread here tails those files.
Each stage start and end becomes one line with its elapsed time. Training steps and evaluation
items become live bars on a terminal (rich), or, when output is not a terminal (CI, a log file),
a plain line per trial every ``plain_every_s`` while its count moves: never minutes of silence,
never a flood of carriage returns in a log.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

Echo = Callable[[str], None]


@dataclass
class _Watched:
    name: str
    path: Path
    offset: int = 0
    partial: bytes = b""
    stage: str | None = None
    counter: tuple[str, int, int] | None = None  # (what, done, total) of the current stage
    said: tuple[str, int, int] | None = None  # the counter the last plain line showed
    bar: Any = None  # rich TaskID while a live bar shows this trial


@dataclass
class SweepConsole:
    echo: Echo = print
    live: bool = False
    plain_every_s: float = 10.0
    poll_s: float = 0.5
    _watched: dict[str, _Watched] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)  # output and the bars
    _reading: threading.Lock = field(default_factory=threading.Lock)  # one reader per file at a time
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _progress: Any = None  # rich.progress.Progress when live

    def __enter__(self) -> SweepConsole:
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
            )
            self._progress.start()
        self._thread = threading.Thread(target=self._run, name="sftlab-console", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object | TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.poll()  # the last events of trials that ended between two polls
        if self._progress is not None:
            self._progress.stop()

    def line(self, text: str) -> None:
        """One line of output, above the live bars when there are any."""
        with self._lock:
            if self._progress is not None:
                self._progress.console.print(text, markup=False, highlight=False, soft_wrap=True)
            else:
                self.echo(text)

    def watch(self, key: str, name: str, path: Path) -> None:
        with self._lock:
            self._watched[key] = _Watched(name, path)

    def forget(self, key: str) -> None:
        """Stop watching a trial that ended (after reading what it still had to say)."""
        self._read(key)
        with self._lock:
            watched = self._watched.pop(key, None)
            if watched is not None and watched.bar is not None:
                self._progress.remove_task(watched.bar)

    def _run(self) -> None:
        ticks_per_plain = max(1, round(self.plain_every_s / self.poll_s))
        tick = 0
        while not self._stop.wait(self.poll_s):
            self.poll()
            tick += 1
            if not self.live and tick % ticks_per_plain == 0:
                self._say_counters()

    def poll(self) -> None:
        for key in list(self._watched):
            self._read(key)

    def _read(self, key: str) -> None:
        with self._reading:
            watched = self._watched.get(key)
            if watched is not None:
                self._read_new(watched)

    def _read_new(self, watched: _Watched) -> None:
        try:
            with watched.path.open("rb") as f:
                f.seek(watched.offset)
                chunk = f.read()
        except OSError:  # not written yet
            return
        watched.offset += len(chunk)
        *lines, watched.partial = (watched.partial + chunk).split(b"\n")
        for raw in lines:
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            if isinstance(event, dict):
                self._on_event(watched, event)

    def _on_event(self, watched: _Watched, event: dict[str, Any]) -> None:
        kind, stage = event.get("event"), event.get("stage")
        if kind == "stage_start":
            watched.stage, watched.counter, watched.said = stage, None, None
            self.line(f"{watched.name}: {stage} started")
        elif kind == "stage_end":
            seconds = float(event.get("seconds") or 0.0)
            if event.get("ok"):
                self.line(f"{watched.name}: {stage} finished in {seconds:.1f}s")
            else:
                self.line(f"{watched.name}: {stage} FAILED after {seconds:.1f}s: {event.get('error', '')}")
            watched.counter = None
            self._show_bar(watched)
        elif kind == "steps":
            watched.counter = (str(event.get("what")), int(event.get("done") or 0), int(event.get("total") or 0))
            self._show_bar(watched)

    def _show_bar(self, watched: _Watched) -> None:
        if self._progress is None:
            return
        with self._lock:
            if watched.counter is None:
                if watched.bar is not None:
                    self._progress.remove_task(watched.bar)
                    watched.bar = None
                return
            what, done, total = watched.counter
            description = f"{watched.name}: {watched.stage} {what}"
            if watched.bar is None:
                watched.bar = self._progress.add_task(description, total=total or None)
            self._progress.update(watched.bar, description=description, completed=done, total=total or None)

    def _say_counters(self) -> None:
        for watched in list(self._watched.values()):
            if watched.counter is not None and watched.counter != watched.said:
                what, done, total = watched.counter
                self.line(f"{watched.name}: {watched.stage} {what} {done}/{total}")
                watched.said = watched.counter
