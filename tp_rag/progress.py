"""Progress in counts with an estimate of the time left, for progress callbacks that print lines
(the command line in a log, the demo's progress bar), and a heartbeat for long silent steps.

>>> eta = Estimate("texts")
>>> eta.update(40, 100)
>>> str(eta)  # doctest: +SKIP
'40/100 texts, 0:12 so far, about 0:18 left'
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from typing import Literal

from tqdm import tqdm

BEAT_SECONDS = 5.0
"""How often a ``Heartbeat`` wakes up (by default)."""
QUIET_SECONDS = 30.0
"""The longest a long command stays silent in a log: a heartbeat line says how far it is."""

IngestEvent = Literal["files_found", "file_read", "chunks_embedded", "chunks_written"]
"""What changed in an ``IngestCounts``: the ``IngestProgress`` callback that was called."""


class Estimate:
    """``done`` of ``total`` units since the object was made, and the time left at that rate.

    ``approximate=True`` marks a total that is itself an estimate (printed ``~total``). Times are
    formatted by tqdm (``m:ss`` or ``h:mm:ss``). There is no time left before the first unit is
    done: a rate needs one finished batch.
    """

    def __init__(self, unit: str) -> None:
        self.unit = unit
        self.done = 0
        self.total = 0
        self.approximate = False
        self.started = time.monotonic()

    def update(self, done: int, total: int, *, approximate: bool = False) -> None:
        """Record the counts so far."""
        self.done, self.total, self.approximate = done, max(total, done), approximate

    @property
    def fraction(self) -> float:
        """Share done, in [0, 1] (0 while the total is unknown)."""
        return self.done / self.total if self.total else 0.0

    def seconds_left(self) -> float | None:
        """Time left at the average rate so far; ``None`` before the first unit is done."""
        if self.done <= 0:
            return None
        elapsed = time.monotonic() - self.started
        return elapsed / self.done * (self.total - self.done)

    def timing(self) -> str:
        """``0:12 so far, about 0:18 left`` (``0:12 so far`` until a rate is known, ``0:30``
        once done)."""
        elapsed = tqdm.format_interval(time.monotonic() - self.started)
        left = self.seconds_left()
        if self.done >= self.total > 0:
            return elapsed
        if left is None:
            return f"{elapsed} so far"
        return f"{elapsed} so far, about {tqdm.format_interval(left)} left"

    def __str__(self) -> str:
        total = f"~{self.total}" if self.approximate else str(self.total)
        return f"{self.done}/{total} {self.unit}, {self.timing()}"


class Heartbeat:
    """Calls ``beat()`` every ``every`` seconds on a daemon thread while it is open, so a step
    that reports nothing for minutes (the first batch of a big model on a CPU) still shows that
    it is alive. ``beat`` runs in a copy of the opener's ``contextvars`` context (what Gradio's
    progress needs); an exception in it stops the heartbeat, never the work.

    >>> with Heartbeat(lambda: print("still working"), every=30):  # doctest: +SKIP
    ...     slow_step()
    """

    def __init__(self, beat: Callable[[], None], every: float | None = None) -> None:
        self._beat = beat
        self._every = BEAT_SECONDS if every is None else every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self._beat()
            except Exception:  # a display problem must not stop the work it reports on
                return

    def __enter__(self) -> Heartbeat:
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._run,), name="tp-rag-heartbeat", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


class IngestCounts:
    """An ``IngestProgress`` that keeps the counts of an ``ingest`` run and describes them.

    The total of chunks is known once every file is read; before that it is estimated from the
    files read so far (``~``). The time left counts the TP-on and the TP-off pass of each chunk,
    at the rate measured once the first batch is embedded. Subclasses (the command line's bars
    and log lines, the demo's bar) override ``on_update``, called after every change.
    """

    def __init__(self) -> None:
        self.files = self.read = self.queued = self.written = 0
        self.embedded = {True: 0, False: 0}  # TP on, TP off
        self.last_file = ""
        """The ``source`` name of the file read last."""
        self.last_chunks = 0
        """Chunks of the file read last that were queued for embedding."""
        self._passes = Estimate("passes")
        self._shown = 0.0

    def on_update(self, event: IngestEvent) -> None:
        """Called after each ``IngestProgress`` callback (``event`` names it): redraw here."""

    def files_found(self, total: int) -> None:
        self.files = total
        self.on_update("files_found")

    def file_read(self, name: str, chunks: int) -> None:
        self.read += 1
        self.queued += chunks
        self.last_file, self.last_chunks = name, chunks
        self.on_update("file_read")

    def chunks_embedded(self, count: int, tp: bool) -> None:
        self.embedded[tp] += count
        self.on_update("chunks_embedded")

    def chunks_written(self, count: int) -> None:
        self.written += count
        for tp in (True, False):  # for progress sources that only report written chunks
            self.embedded[tp] = max(self.embedded[tp], self.written)
        self.on_update("chunks_written")

    @property
    def total(self) -> int:
        """Chunks to embed: those queued, plus an estimate for the files not read yet."""
        if self.read >= self.files or self.read == 0:
            return self.queued
        return round(self.queued / self.read * self.files)

    @property
    def fraction(self) -> float:
        """Share of the embedding work done, in [0, 1]; it never decreases (a bar does not move
        back when the estimated total grows)."""
        self._shown = max(self._shown, self._estimate().fraction)
        return self._shown

    @property
    def finished(self) -> bool:
        """Every file is read and every queued chunk embedded with TP on and off."""
        return self.read >= self.files and min(self.embedded.values()) >= self.queued

    def _estimate(self) -> Estimate:
        self._passes.update(
            sum(self.embedded.values()), 2 * self.total, approximate=self.read < self.files
        )
        return self._passes

    def time_left(self) -> str:
        """``about 2:03 left`` once a batch is embedded, else ``""``."""
        left = self._estimate().seconds_left()
        if left is None or self.finished:
            return ""
        return f"about {tqdm.format_interval(left)} left"

    def describe(self) -> str:
        """E.g. ``embedded 32/~80 chunks with TP on, 0 with TP off (12/32 files read), 0:41 so
        far, about 2:03 left``; before the first batch is done, what is being embedded."""
        estimate = self._estimate()
        total = f"~{self.total}" if estimate.approximate else str(self.total)
        chunk_word = "chunk" if self.total == 1 else "chunks"
        if self.queued and not any(self.embedded.values()):
            text = f"embedding the first batch of {total} {chunk_word} with TP on"
        else:
            text = (
                f"embedded {self.embedded[True]}/{total} {chunk_word} with TP on, "
                f"{self.embedded[False]} with TP off"
            )
        if self.read < self.files:
            text += f" ({self.read}/{self.files} files read)"
        return f"{text}, {estimate.timing()}"
