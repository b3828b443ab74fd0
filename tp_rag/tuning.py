"""``tp-rag tune``: choose ``tp_stop`` and ``output_layer`` on labelled dev data.

The grid is ``tp_stop`` candidates x ``output_layer`` candidates. Each ``tp_stop`` costs one
forward pass per text (``TPEncoder.encode_layers``), which reads the vectors out at every
candidate layer at once, so the model never runs again for another output layer. Every cell is
scored with the same metric code as ``tp-rag eval`` (Spearman x100 on STS data, a retrieval
figure on a BEIR split); the best cell is written as a JSON preset.

Memory: the vectors of every candidate layer are ``n x layers x d`` floats (26 GB for 50,000
texts, 32 layers and d = 4096), so they never sit in memory together. Texts go through the model
in slices of ``chunk_size``; each slice's vectors are written, layer by layer, to one ``.npy``
file per layer in a temporary folder (``tmp_dir``, else the system's), and each layer is scored
from its file on its own. Peak host memory is ``O(n x d + chunk_size x layers x d)`` floats
(one layer's matrix while it is scored, one slice of every layer while embedding); the disk
holds ``n x layers x d x 4`` bytes while a tp_stop candidate is scored.

>>> from tp_rag.datasets import read_sts
>>> result = tune(enc, read_sts("sts-dev.csv"), tp_stops=[2, 3], layers=[10, 12])  # doctest: +SKIP
>>> write_preset("tuned.json", enc, result)  # doctest: +SKIP
>>> TPEncoder.from_pretrained(enc.config.model, preset="tuned.json")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tp_rag.config import hidden_states_index
from tp_rag.datasets import RetrievalSet, StsTask
from tp_rag.metrics import RETRIEVAL_METRICS, score_retrieval, sts_spearman, text_index

if TYPE_CHECKING:
    from tp_rag.encoder import TPEncoder


@dataclass(frozen=True)
class TuneResult:
    """The scored grid and its best cell."""

    metric: str
    tp_start: int
    tp_stops: tuple[int, ...]
    layers: tuple[int, ...]
    grid: np.ndarray  # (len(tp_stops), len(layers)): score of each (tp_stop, output_layer)
    tp_off: np.ndarray  # (len(layers),): TP off at each layer, for reference (never chosen)

    @property
    def best(self) -> tuple[int, int, float]:
        """``(tp_stop, output_layer, score)`` of the highest cell (first in row order on ties)."""
        if np.isnan(self.grid).all():
            raise ValueError("every cell of the grid scored NaN (constant vectors?)")
        row, column = np.unravel_index(np.nanargmax(self.grid), self.grid.shape)
        return self.tp_stops[row], self.layers[column], float(self.grid[row, column])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready grid: ``cells[str(tp_stop)][str(layer)] = score``."""
        return {
            "metric": self.metric,
            "tp_start": self.tp_start,
            "tp_stops": list(self.tp_stops),
            "layers": list(self.layers),
            "cells": {
                str(stop): {
                    str(layer): _finite(v) for layer, v in zip(self.layers, row, strict=True)
                }
                for stop, row in zip(self.tp_stops, self.grid, strict=True)
            },
            "tp_off": {
                str(layer): _finite(v) for layer, v in zip(self.layers, self.tp_off, strict=True)
            },
        }


_CANDIDATE = re.compile(r"^(-?\d+)(?:-(-?\d+))?$")


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def parse_candidates(text: str) -> list[int]:
    """``"2-5,8"`` -> ``[2, 3, 4, 5, 8]`` (sorted, without repeats; negatives allowed).

    >>> parse_candidates("2-4,8")
    [2, 3, 4, 8]
    """
    values: set[int] = set()
    for item in text.split(","):
        match = _CANDIDATE.match(item.strip())
        if match is None or (match[2] is not None and int(match[1]) > int(match[2])):
            raise ValueError(
                f"{text!r} is not a list of layers: use numbers and ranges, e.g. 2-6 or 3,5,7"
            )
        low = int(match[1])
        values.update(range(low, int(match[2]) + 1) if match[2] is not None else (low,))
    return sorted(values)


def default_tp_stops(tp_start: int, num_layers: int) -> list[int]:
    """``tp_start + 1`` up to a third of the depth: covers the authors' choices (3-7 of 28-42)."""
    return list(range(tp_start + 1, max(tp_start + 1, math.ceil(num_layers / 3)) + 1))


CHUNK_BYTES = 256 * 2**20
"""Default budget for one slice of texts read out at every candidate layer (``chunk_size``)."""


def _chunk_size(encoder: TPEncoder, layers: int) -> int:
    """Texts per slice so that a slice's vectors at every layer fit ``CHUNK_BYTES``."""
    per_text = layers * encoder.dimension * 4
    return max(encoder.config.batch_size, CHUNK_BYTES // per_text)


def layer_vectors(
    encoder: TPEncoder,
    texts: Sequence[str],
    layers: Sequence[int],
    folder: str | Path,
    *,
    tp: bool,
    chunk_size: int,
    name: str = "texts",
    progress: Callable[[int], None] | None = None,
    query: bool = False,
) -> dict[int, Path]:
    """Embed ``texts`` read out at every layer of ``layers``, into one ``.npy`` per layer
    (``query=True``: with the query template).

    Texts go through ``encode_layers`` in slices of ``chunk_size`` (longest first, so slices pad
    little); each slice's rows are written into the layers' files at once, so host memory holds
    one slice of every layer, never all texts at all layers. ``progress(n)`` follows every
    batch with the texts it completed (a slice is many batches: a long one still reports).
    Returns ``{layer: path}``; load a layer with ``np.load(path, mmap_mode="r")``.
    """
    folder = Path(folder)
    paths = {layer: folder / f"{name}-layer{layer}.npy" for layer in layers}
    files = {
        layer: np.lib.format.open_memmap(
            path, mode="w+", dtype=np.float32, shape=(len(texts), encoder.dimension)
        )
        for layer, path in paths.items()
    }
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    for begin in range(0, len(order), chunk_size):
        rows = order[begin : begin + chunk_size]
        vectors = encoder.encode_layers(
            [texts[i] for i in rows], list(layers), tp=tp, query=query, progress=progress
        )
        for layer, file in files.items():
            file[rows] = vectors[layer]
        del vectors
    for file in files.values():
        file.flush()
    del files  # close the maps: scoring reopens one layer at a time
    return paths


def tune(
    encoder: TPEncoder,
    data: StsTask | RetrievalSet,
    *,
    tp_stops: Sequence[int] | None = None,
    layers: Sequence[int] | None = None,
    metric: str = "nDCG@10",
    chunk_size: int | None = None,
    tmp_dir: str | Path | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> TuneResult:
    """Score every (tp_stop, output_layer) cell on ``data``, plus TP off at every layer.

    One forward pass per text per ``tp_stop`` candidate (and one with TP off), read out at every
    candidate layer at once. Vectors go to disk layer by layer (``layer_vectors``, under
    ``tmp_dir``) in slices of ``chunk_size`` texts (default: what fits 256 MiB at every layer),
    and each layer is scored alone, so memory does not grow with ``layers x texts``.
    ``progress(done, total, what)`` (an ``EvalProgress``) counts the texts embedded, over all
    passes (each tp_stop candidate, then TP off).
    """
    config = encoder.config
    num_layers = encoder.num_layers
    tp_stops = list(tp_stops or default_tp_stops(config.tp_start, num_layers))
    layers = list(layers or range(1, num_layers + 1))
    if isinstance(data, RetrievalSet) and metric not in RETRIEVAL_METRICS:
        raise ValueError(f"metric={metric!r} is not one of {', '.join(RETRIEVAL_METRICS)}")
    bad = [s for s in tp_stops if not config.tp_start < s <= num_layers]
    if bad:
        raise ValueError(
            f"tp_stop candidate(s) {bad} out of range: with tp_start={config.tp_start} and "
            f"{num_layers} decoder layers, tp_stop must be in {config.tp_start + 1}..{num_layers}"
        )
    layers = sorted({hidden_states_index(layer, num_layers, "layer candidate") for layer in layers})
    chunk = chunk_size or _chunk_size(encoder, len(layers))
    if chunk < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be a positive number of texts")

    def load(path: Path) -> np.ndarray:
        return np.load(path, mmap_mode="r")

    per_pass = (
        len(text_index([*data.pooled().sentences1, *data.pooled().sentences2])[0])
        if isinstance(data, StsTask)
        else len(data.documents) + len(data.queries)
    )
    counted = {"done": 0, "what": ""}

    def count(texts: int) -> None:
        counted["done"] += texts
        if progress is not None:
            progress(counted["done"], per_pass * (len(tp_stops) + 1), str(counted["what"]))

    def score_layers(candidate: TPEncoder, tp: bool, folder: str) -> list[float]:
        off = f"{candidate.config.method.upper()} off"
        counted["what"] = f"tp_stop={candidate.config.tp_stop}" if tp else off

        def vectors_of(texts: Sequence[str], name: str, query: bool = False) -> dict[int, Path]:
            return layer_vectors(
                candidate,
                texts,
                layers,
                folder,
                tp=tp,
                chunk_size=chunk,
                name=name,
                progress=count,
                query=query,
            )

        score: Callable[[int], float]
        if isinstance(data, StsTask):
            pooled = data.pooled()
            texts, index = text_index([*pooled.sentences1, *pooled.sentences2])
            files = vectors_of(texts, "sentences")

            def score(layer: int) -> float:
                return sts_spearman(pooled, load(files[layer]), index)
        else:
            docs = vectors_of(list(data.documents), "documents")
            queries = vectors_of(list(data.queries), "queries", query=True)

            def score(layer: int) -> float:
                return score_retrieval(data, load(queries[layer]), load(docs[layer]))[metric]

        return [score(layer) for layer in layers]

    with tempfile.TemporaryDirectory(prefix="tp-rag-tune-", dir=tmp_dir) as folder:
        grid = np.array(
            [score_layers(encoder.with_settings(tp_stop=s), True, folder) for s in tp_stops]
        )
        tp_off = np.array(score_layers(encoder, False, folder))
    return TuneResult(
        metric="Spearman x100" if isinstance(data, StsTask) else metric,
        tp_start=config.tp_start,
        tp_stops=tuple(tp_stops),
        layers=tuple(layers),
        grid=grid.reshape(len(tp_stops), len(layers)),
        tp_off=tp_off,
    )


def preset_settings(encoder: TPEncoder, result: TuneResult) -> dict[str, Any]:
    """The TPConfig fields of the best cell, with the prompt and pooling it was tuned with."""
    config = encoder.config
    tp_stop, output_layer, _ = result.best
    settings: dict[str, Any] = {
        "method": config.method,
        "prompt": config.prompt,
        "query_prompt": config.query_prompt,
        "tp": True,
        "tp_start": config.tp_start,
        "tp_stop": tp_stop,
        "output_layer": output_layer,
        "pooling": config.pooling,
        "max_length": config.max_length,
    }
    if config.clean_text is not None:
        settings["clean_text"] = config.clean_text
    return settings


def write_preset(
    path: str | Path, encoder: TPEncoder, result: TuneResult, *, tuned_on: str = ""
) -> dict[str, Any]:
    """Write the best cell as a preset (``{"settings": {...}, ...notes}``); returns it."""
    from tp_rag.evaluation import write_json

    score = result.best[2]
    preset = {
        "settings": preset_settings(encoder, result),
        "model": encoder.config.model,
        "model_digest": encoder.config.model_digest,
        "tuned_on": tuned_on,
        "metric": result.metric,
        "score": score,
        "grid": result.to_dict(),
    }
    write_json(path, preset)
    return preset
