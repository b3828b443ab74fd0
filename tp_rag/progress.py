"""Progress in counts with an estimate of the time left, for progress callbacks that print lines
(the command line in a log, the demo's progress bar).

>>> eta = Estimate("texts")
>>> eta.update(40, 100)
>>> str(eta)  # doctest: +SKIP
'40/100 texts, 0:12 so far, about 0:18 left'
"""

from __future__ import annotations

import time

from tqdm import tqdm


class Estimate:
    """``done`` of ``total`` units since the object was made, and the time left at that rate.

    ``approximate=True`` marks a total that is itself an estimate (printed ``~total``). Times are
    formatted by tqdm (``m:ss`` or ``h:mm:ss``).
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

    def __str__(self) -> str:
        total = f"~{self.total}" if self.approximate else str(self.total)
        text = f"{self.done}/{total} {self.unit}"
        elapsed = tqdm.format_interval(time.monotonic() - self.started)
        left = self.seconds_left()
        if left is None or self.done >= self.total:
            return f"{text}, {elapsed}"
        return f"{text}, {elapsed} so far, about {tqdm.format_interval(left)} left"


class IngestCounts:
    """An ``IngestProgress`` that keeps the counts of an ``ingest`` run and describes them.

    The total of chunks is known once every file is read; before that it is estimated from the
    files read so far (``~``). The time left counts the TP-on and the TP-off pass of each chunk.
    Subclasses (the command line's log lines, the demo's bar) call ``describe()`` when told.
    """

    def __init__(self) -> None:
        self.files = self.read = self.queued = self.written = 0
        self.embedded = {True: 0, False: 0}  # TP on, TP off
        self._passes = Estimate("passes")
        self._shown = 0.0

    def files_found(self, total: int) -> None:
        self.files = total

    def file_read(self, name: str, chunks: int) -> None:
        self.read += 1
        self.queued += chunks

    def chunks_embedded(self, count: int, tp: bool) -> None:
        self.embedded[tp] += count

    def chunks_written(self, count: int) -> None:
        self.written += count
        for tp in (True, False):  # for progress sources that only report written chunks
            self.embedded[tp] = max(self.embedded[tp], self.written)

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

    def _estimate(self) -> Estimate:
        self._passes.update(
            sum(self.embedded.values()), 2 * self.total, approximate=self.read < self.files
        )
        return self._passes

    def describe(self) -> str:
        """E.g. ``embedded 32/~80 chunks with TP on, 0 with TP off (12/32 files read), 0:41 so
        far, about 2:03 left``."""
        estimate = self._estimate()
        total = f"~{self.total}" if estimate.approximate else str(self.total)
        chunk_word = "chunk" if self.total == 1 else "chunks"
        text = (
            f"embedded {self.embedded[True]}/{total} {chunk_word} with TP on, "
            f"{self.embedded[False]} with TP off"
        )
        if self.read < self.files:
            text += f" ({self.read}/{self.files} files read)"
        return f"{text}, {str(estimate).partition(', ')[2]}"
