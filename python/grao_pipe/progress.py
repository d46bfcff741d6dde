"""Progress of long work, in two forms: a live bar on a terminal, plain log lines elsewhere.

A stage opens a *board* (``with progress.board("score"):``, done by ``Stage.run``); work inside it
opens *tasks* by label (``progress.task("judge helpful", total=..., unit="calls")``) and advances
them. On a terminal (stderr is a TTY) the board is a rich live display, one bar per task. Anywhere
else (Airflow, cron, ``nohup``, a pipe) a ticker thread prints, every ``GRAO_PIPE_PROGRESS_EVERY``
seconds (default 30; ``0`` turns the lines off; the ``--progress-every`` option of the CLI sets
it), one line per unfinished task, plus one line when a task finishes::

    progress judge helpful: 120/640 calls (19%) | 2.10 calls/s | elapsed 57s | ETA 4m08s | errors 3

The line is printed even when nothing advanced (a sign of life during a long call or a model
load). Tasks opened with no board (a scorer called from a unit test, a library user) are
counted but print nothing. The learner, a torchrun child whose stdout is ``train.log``, prints
one such line per optimizer step (``step_line``), flushed; the train stage follows that file and
feeds the lines into its own board (``parse_line``).
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

ENV_EVERY = "GRAO_PIPE_PROGRESS_EVERY"
DEFAULT_EVERY_S = 30.0


def every_s() -> float:
    """Seconds between two plain progress lines (``GRAO_PIPE_PROGRESS_EVERY``; 0 = none)."""
    raw = os.environ.get(ENV_EVERY, "")
    try:
        value = float(raw) if raw.strip() else DEFAULT_EVERY_S
    except ValueError:
        value = DEFAULT_EVERY_S
    return max(value, 0.0) if value == value else DEFAULT_EVERY_S  # NaN: the default


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Task:
    """One unit of long work: ``done`` of ``total`` items, with counters (tokens, errors)."""

    def __init__(self, label: str, total: int | None = None, unit: str = "items", start: int = 0,
                 board: _Board | None = None):
        self.label, self.unit = label, unit
        self.total = total
        self.done = start
        self._start_done = start  # a resumed task: rates count only this run's work
        self.tokens = 0
        self.errors = 0
        self.t0 = time.monotonic()
        self._rate_t0 = self.t0  # rates and ETA count from here (restart_clock)
        self.finished = False
        self.stopped = False  # ended by an error or an interrupt, not done
        self._board = board
        self._lock = threading.Lock()

    def restart_clock(self) -> None:
        """Rates and ETA from now (the work starts after a model load); elapsed still counts it."""
        with self._lock:
            self._rate_t0 = time.monotonic()
            self._start_done = self.done
            self.tokens = 0

    def grow(self, n: int) -> Task:
        """Add ``n`` items to the total (work discovered shard by shard)."""
        with self._lock:
            self.total = (self.total or 0) + n
        self._changed()
        return self

    def set_total(self, total: int | None) -> Task:
        with self._lock:
            self.total = total
        self._changed()
        return self

    def advance(self, n: int = 1, *, tokens: int = 0, errors: int = 0) -> None:
        with self._lock:
            self.done += n
            self.tokens += tokens
            self.errors += errors
        self._changed()

    def update(self, done: int, *, tokens: int | None = None, errors: int | None = None,
               total: int | None = None) -> None:
        """Absolute values (a count read from another process)."""
        with self._lock:
            self.done = done
            if tokens is not None:
                self.tokens = tokens
            if errors is not None:
                self.errors = errors
            if total is not None:
                self.total = total
        self._changed()

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self._board is not None:
            self._board.finished(self)

    def _changed(self) -> None:
        if self._board is not None:
            self._board.changed(self)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def rate(self) -> float:
        return (self.done - self._start_done) / max(time.monotonic() - self._rate_t0, 1e-9)

    def token_rate(self) -> float:
        return self.tokens / max(time.monotonic() - self._rate_t0, 1e-9)

    def eta_s(self) -> float | None:
        r = self.rate()
        if self.total is None or r <= 0:
            return None
        return max(self.total - self.done, 0) / r

    def line(self) -> str:
        """``progress <label>: done/total unit (pct) | rate | [tokens] | elapsed | ETA | errors``."""
        with self._lock:
            done, total, tokens, errors = self.done, self.total, self.tokens, self.errors
        parts = [f"{done}/{total if total is not None else '?'} {self.unit}"
                 + (f" ({done / total:.0%})" if total else "")]
        parts.append(f"{self.rate():.2f} {self.unit}/s")
        if tokens:
            parts.append(f"{tokens} tokens, {self.token_rate():.0f} tok/s")
        parts.append(f"elapsed {_duration(self.elapsed)}")
        eta = self.eta_s()
        parts.append("stopped" if self.stopped else "done" if self.finished
                     else f"ETA {_duration(eta) if eta is not None else '?'}")
        parts.append(f"errors {errors}")
        return f"progress {self.label}: " + " | ".join(parts)


_LINE = re.compile(r"^progress (?P<label>[^:]+): (?P<done>\d+)/(?P<total>\d+|\?) (?P<unit>\S+)"
                   r"(?:.*?\| (?P<tokens>\d+) tokens,)?(?:.*\| errors (?P<errors>\d+))?")


def parse_line(line: str) -> dict[str, Any] | None:
    """The counts of a ``Task.line`` (another process's progress), or None if ``line`` is not one."""
    m = _LINE.match(line.strip())
    if m is None:
        return None
    total = m["total"]
    return {"label": m["label"], "done": int(m["done"]), "total": None if total == "?" else int(total),
            "unit": m["unit"], "tokens": int(m["tokens"] or 0), "errors": int(m["errors"] or 0)}


class _Board:
    """The tasks of one stage, shown as rich bars (TTY) or printed by a ticker thread."""

    def __init__(self, name: str, stream: Any, tty: bool, every: float):
        self.name = name
        self.stream = stream
        self.tasks: dict[str, Task] = {}
        self.every = every
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._rich: Any = None
        self._rich_ids: dict[str, Any] = {}
        self._thread: threading.Thread | None = None
        if tty:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._rich = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TextColumn("{task.fields[info]}"),
                                  console=Console(file=stream), transient=False)
            self._rich.start()
        elif every > 0:
            self._print([f"progress {name}: started"])  # then a line every `every` seconds
            self._thread = threading.Thread(target=self._tick, name=f"progress-{name}", daemon=True)
            self._thread.start()

    def task(self, label: str, total: int | None, unit: str, start: int) -> Task:
        with self._lock:
            t = self.tasks.get(label)
            if t is None or t.finished:
                t = self.tasks[label] = Task(label, total, unit, start, board=self)
                if self._rich is not None:
                    self._rich_ids[label] = self._rich.add_task(label, total=total, completed=start, info="")
            else:
                if total is not None:
                    t.total = total
                if unit != "items":
                    t.unit = unit
        return t

    def changed(self, t: Task) -> None:
        if self._rich is not None and t.label in self._rich_ids:
            eta = t.eta_s()
            info = f"{t.rate():.2f} {t.unit}/s" + (f", {t.token_rate():.0f} tok/s" if t.tokens else "")
            info += f", ETA {_duration(eta)}" if eta is not None else ""
            info += f", errors {t.errors}" if t.errors else ""
            self._rich.update(self._rich_ids[t.label], completed=t.done, total=t.total, info=info)

    def finished(self, t: Task) -> None:
        if self._rich is None and self.every > 0:
            self._print([t.line()])

    def _print(self, lines: list[str]) -> None:
        if not lines:
            return
        try:
            self.stream.write("".join(line + "\n" for line in lines))
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken log stream must not fail the stage
            pass

    def _tick(self) -> None:
        # On a fixed schedule (start + k * every), so a late tick (a loaded machine, a long
        # GIL-holding call) does not push every later one back.
        due = time.monotonic() + self.every
        while not self._stop.wait(max(due - time.monotonic(), 0.0)):
            due += self.every
            if due <= time.monotonic():  # more than a whole period late: no burst of catch-up lines
                due = time.monotonic() + self.every
            with self._lock:
                live = [t for t in self.tasks.values() if not t.finished]
            self._print([t.line() for t in live])

    def close(self, failed: bool = False) -> None:
        self._stop.set()
        for t in list(self.tasks.values()):
            if failed and not t.finished:
                t.stopped = True
            t.finish()
        if self._rich is not None:
            self._rich.stop()


_current: _Board | None = None
_current_lock = threading.Lock()


@contextmanager
def board(name: str, stream: Any = None) -> Iterator[Task]:
    """The progress display of stage ``name`` for the duration of the block; yields its main
    task (labelled ``name``, total unknown until the stage sets it). Nested boards reuse the
    outer one (``run`` around a stage)."""
    global _current
    stream = stream if stream is not None else sys.stderr
    with _current_lock:
        outer = _current
        if outer is None:
            _current = _Board(name, stream, bool(getattr(stream, "isatty", lambda: False)()), every_s())
        b = _current
    assert b is not None
    failed = True
    try:
        yield b.task(name, None, "items", 0)
        failed = False
    finally:
        if outer is None:
            with _current_lock:
                _current = None
            b.close(failed)


def task(label: str, total: int | None = None, unit: str = "items", start: int = 0) -> Task:
    """The task ``label`` of the current board (created on first use), or a silent task."""
    b = _current
    if b is None:
        return Task(label, total, unit, start)
    return b.task(label, total, unit, start)


_learner: Task | None = None


def learner_step(done: int, total: int, tokens: int) -> None:
    """Learner side (rank 0): after step ``done`` of ``total``, one progress line on stdout
    (``train.log``), flushed, which the train stage follows. A resumed run counts from its
    first step."""
    global _learner
    if _learner is None:
        _learner = Task("train", total, "steps", start=done - 1)
    _learner.update(done, tokens=_learner.tokens + tokens, total=total)
    _learner.finished = done >= total
    print(_learner.line(), flush=True)


def follow(log_path: Any, proc: Any, into: Task, poll_s: float = 0.5) -> int:
    """Wait for ``proc`` while reading the progress lines it appends to ``log_path`` into
    ``into``; returns its exit code."""
    pos, first = 0, True
    while True:
        rc = proc.poll()
        try:
            with open(log_path, "rb") as f:
                f.seek(pos)
                chunk = f.read()
        except OSError:
            chunk = b""
        end = chunk.rfind(b"\n") + 1  # whole lines only; the rest is read on the next poll
        pos += end
        for raw in chunk[:end].decode(errors="replace").splitlines():
            got = parse_line(raw)
            if got is not None and got["label"] == into.label:
                if first:  # rates from the learner's first step, not from torchrun's start
                    into.update(max(got["done"] - 1, 0), total=got["total"])
                    into.restart_clock()
                    first = False
                into.update(got["done"], tokens=got["tokens"], errors=got["errors"], total=got["total"])
        if rc is not None:
            into.finish()
            return int(rc)
        time.sleep(poll_s)
