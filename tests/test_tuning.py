"""`tp-rag tune`: the tp_stop x output_layer grid, its best cell, one pass per tp_stop, presets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from synthetic import write_beir, write_stsb

from tp_rag import TPEncoder
from tp_rag.cli import main
from tp_rag.datasets import read_beir, read_sts
from tp_rag.metrics import score_retrieval, sts_spearman, text_index
from tp_rag.tuning import default_tp_stops, parse_candidates, tune, write_preset

SETTINGS = {"device": "cpu", "dtype": "float32", "batch_size": 128}


@pytest.fixture(scope="module")
def encoder(tiny_llama: Path) -> TPEncoder:
    """The tiny 4-layer Llama with one batch for every data set here."""
    return TPEncoder.from_pretrained(tiny_llama, **SETTINGS)


@pytest.fixture
def sts_file(tmp_path: Path) -> Path:
    return write_stsb(tmp_path / "sts-dev.csv", pairs=30, seed=1)


def test_grid_is_complete_and_best_is_its_maximum(encoder: TPEncoder, sts_file: Path) -> None:
    """Every (tp_stop, layer) cell is scored, and the chosen cell is the grid's maximum."""
    result = tune(encoder, read_sts(sts_file), tp_stops=[2, 3, 4], layers=[1, 2, 3, 4])
    assert result.grid.shape == (3, 4) and np.isfinite(result.grid).all()
    assert result.tp_off.shape == (4,) and np.isfinite(result.tp_off).all()
    tp_stop, layer, score = result.best
    assert score == result.grid.max()
    assert result.grid[result.tp_stops.index(tp_stop), result.layers.index(layer)] == score
    cells = result.to_dict()["cells"]
    assert sorted(cells) == ["2", "3", "4"] and all(
        sorted(r) == ["1", "2", "3", "4"] for r in cells.values()
    )


def test_grid_cells_equal_separately_configured_encoders(
    encoder: TPEncoder, tiny_llama: Path, sts_file: Path
) -> None:
    """Each cell equals the Spearman of an encoder built with that tp_stop and output_layer, and
    the TP off row equals tp=False at each layer: the shared readout changes no vector."""
    task = read_sts(sts_file)
    pairs = task.pooled()
    texts, index = text_index([*pairs.sentences1, *pairs.sentences2])
    result = tune(encoder, task, tp_stops=[2, 4], layers=[2, 4])
    for i, tp_stop in enumerate(result.tp_stops):
        for j, layer in enumerate(result.layers):
            # Same batch size: padding noise (1e-7) would reorder exactly tied cosines.
            alone = TPEncoder.from_pretrained(
                tiny_llama, **SETTINGS, tp_stop=tp_stop, output_layer=layer
            )
            expected = sts_spearman(pairs, alone.encode(texts), index)
            assert result.grid[i, j] == pytest.approx(expected, abs=1e-3)
            if i == 0:
                off = sts_spearman(pairs, alone.encode(texts, tp=False), index)
                assert result.tp_off[j] == pytest.approx(off, abs=1e-3)


def test_one_forward_pass_per_tp_stop(encoder: TPEncoder, sts_file: Path) -> None:
    """The model runs once per text per tp_stop candidate (+ once for the TP off row), however
    many output layers are read: layer 0 sees every distinct text 3 + 1 times."""
    task = read_sts(sts_file)
    pairs = task.pooled()
    texts, _ = text_index([*pairs.sentences1, *pairs.sentences2])
    first_layer = encoder._loaded.layers[0]
    rows: list[int] = []
    handle = first_layer.register_forward_pre_hook(
        lambda module, args, kwargs: rows.append((args or [kwargs["hidden_states"]])[0].shape[0]),
        with_kwargs=True,
    )
    try:
        tune(encoder, task, tp_stops=[2, 3, 4], layers=[1, 2, 3, 4])
    finally:
        handle.remove()
    assert sum(rows) == (3 + 1) * len(texts)


def test_retrieval_grid_uses_the_eval_metric(encoder: TPEncoder, tmp_path: Path) -> None:
    """On a BEIR split each cell is the chosen retrieval metric, as `eval retrieval` computes it."""
    data = read_beir(write_beir(tmp_path / "beir", queries=6, split="dev", gain=lambda i: 1), "dev")
    result = tune(encoder, data, tp_stops=[2, 3], layers=[2, 4], metric="MRR@10")
    assert result.metric == "MRR@10" and result.grid.shape == (2, 2)
    assert result.best[2] == result.grid.max()
    alone = encoder.with_settings(tp_stop=3, output_layer=4)
    expected = score_retrieval(
        data, alone.encode(list(data.queries)), alone.encode(list(data.documents))
    )["MRR@10"]
    assert result.grid[1, 1] == pytest.approx(expected, abs=1e-6)


def test_preset_round_trip(encoder: TPEncoder, tiny_llama: Path, tmp_path: Path) -> None:
    """The written preset loads with from_pretrained(preset=...) and gives the best cell."""
    result = tune(
        encoder,
        read_sts(write_stsb(tmp_path / "d.csv", pairs=30, seed=1)),
        tp_stops=[2, 3],
        layers=[1, 3],
    )
    path = tmp_path / "preset.json"
    write_preset(path, encoder, result, tuned_on="d.csv")
    tp_stop, layer, _ = result.best
    loaded = TPEncoder.from_pretrained(tiny_llama, preset=path)
    assert (loaded.config.tp_stop, loaded.config.output_layer) == (tp_stop, layer)
    assert loaded.config.prompt == encoder.config.prompt and loaded.config.tp


def test_cli_tune_then_eval_with_the_preset(
    tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tp-rag tune` prints the grid and writes a preset; `eval sts --preset` on the same data
    then reports TP on equal to the tuned best score, and `embed --preset` accepts it."""
    data = write_stsb(tmp_path / "sts-dev.csv", pairs=30, seed=1)
    preset = tmp_path / "tuned.json"
    model = ["--model", str(tiny_llama), "--device", "cpu", "--dtype", "float32"]
    args = ["tune", "--data", str(data), "--tp-stops", "2-4", "--layers", "1-4"]
    assert main([*args, *model, "--output", str(preset)]) == 0
    printed = capsys.readouterr().out
    assert "tp_stop" in printed and "TP off" in printed
    written = json.loads(preset.read_text())
    cells = written["grid"]["cells"]
    assert len(cells) == 3 and all(len(row) == 4 for row in cells.values())
    assert written["score"] == max(v for row in cells.values() for v in row.values())

    report = tmp_path / "r.json"
    eval_args = ["eval", "sts", "--data", str(data), "--preset", str(preset), *model]
    assert main([*eval_args, "--json", str(report)]) == 0
    (task,) = json.loads(report.read_text())["tasks"]
    assert task["spearman"]["TP on"] == pytest.approx(written["score"], abs=1e-3)
    assert main(["embed", "a cat", "a dog", "--preset", str(preset), *model]) == 0


def test_cli_tune_refuses_single_layer_options(
    tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--tp-stop/--output-layer make no sense for a search: exit 2 pointing to --tp-stops."""
    data = write_stsb(tmp_path / "d.csv", pairs=30, seed=1)
    args = ["tune", "--data", str(data), "--model", str(tiny_llama), "--tp-stop", "3"]
    assert main([*args, "--output", str(tmp_path / "p.json")]) == 2
    assert "--tp-stops" in capsys.readouterr().err


def test_out_of_range_candidates_are_refused(encoder: TPEncoder, sts_file: Path) -> None:
    """tp_stop candidates must satisfy tp_start < tp_stop <= layers; layers must exist."""
    with pytest.raises(ValueError, match="tp_stop candidate"):
        tune(encoder, read_sts(sts_file), tp_stops=[1, 2], layers=[2])
    with pytest.raises(ValueError, match="layer candidate"):
        tune(encoder, read_sts(sts_file), tp_stops=[2], layers=[9])


def test_parse_candidates() -> None:
    """Numbers and inclusive ranges, sorted without repeats; anything else is a ValueError."""
    assert parse_candidates("2-4,8,3") == [2, 3, 4, 8]
    assert parse_candidates("-2,-1") == [-2, -1]
    for bad in ("", "a", "4-2", "1-"):
        with pytest.raises(ValueError, match="not a list of layers"):
            parse_candidates(bad)


def test_default_tp_stops_cover_the_authors_choices() -> None:
    """Defaults run from tp_start+1 to a third of the depth, which holds every published
    tp_stop (Llama-2-7B: 7 of 32, Llama-3-8B: 3 of 32, Qwen2-7B: 6 of 28, Gemma2-9B: 6 of 42)."""
    assert default_tp_stops(1, 32) == list(range(2, 12))
    for stop, depth in ((7, 32), (3, 32), (6, 28), (6, 42), (7, 40)):
        assert stop in default_tp_stops(1, depth)
    assert default_tp_stops(1, 4) == [2]
