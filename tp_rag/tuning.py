"""``tp-rag tune``: choose ``tp_stop`` and ``output_layer`` on labelled dev data.

The grid is ``tp_stop`` candidates x ``output_layer`` candidates. Each ``tp_stop`` costs one
forward pass per text (``TPEncoder.encode_layers``), which reads the vectors out at every
candidate layer at once, so the model never runs again for another output layer. Every cell is
scored with the same metric code as ``tp-rag eval`` (Spearman x100 on STS data, a retrieval
figure on a BEIR split); the best cell is written as a JSON preset.

>>> from tp_rag.datasets import read_sts
>>> result = tune(enc, read_sts("sts-dev.csv"), tp_stops=[2, 3], layers=[10, 12])  # doctest: +SKIP
>>> write_preset("tuned.json", enc, result)  # doctest: +SKIP
>>> TPEncoder.from_pretrained(enc.config.model, preset="tuned.json")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

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


def tune(
    encoder: TPEncoder,
    data: StsTask | RetrievalSet,
    *,
    tp_stops: Sequence[int] | None = None,
    layers: Sequence[int] | None = None,
    metric: str = "nDCG@10",
) -> TuneResult:
    """Score every (tp_stop, output_layer) cell on ``data``, plus TP off at every layer.

    One ``encode_layers`` call per ``tp_stop`` candidate (and one with TP off) per set of texts.
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
    bad = [layer for layer in layers if not -(num_layers + 1) <= layer <= num_layers]
    if bad:
        raise ValueError(
            f"layer candidate(s) {bad} out of range: this model has {num_layers} decoder "
            f"layers, so hidden_states indices run from {-(num_layers + 1)} to {num_layers}"
        )
    layers = sorted({layer % (num_layers + 1) for layer in layers})

    def score_layers(candidate: TPEncoder, tp: bool) -> list[float]:
        if isinstance(data, StsTask):
            pooled = data.pooled()
            texts, index = text_index([*pooled.sentences1, *pooled.sentences2])
            vectors = candidate.encode_layers(texts, layers, tp=tp)
            return [sts_spearman(pooled, vectors[layer], index) for layer in layers]
        docs = candidate.encode_layers(list(data.documents), layers, tp=tp)
        queries = candidate.encode_layers(list(data.queries), layers, tp=tp)
        return [score_retrieval(data, queries[ly], docs[ly])[metric] for ly in layers]

    grid = np.array([score_layers(encoder.with_settings(tp_stop=s), True) for s in tp_stops])
    tp_off = np.array(score_layers(encoder, False))
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
        "prompt": config.prompt,
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
