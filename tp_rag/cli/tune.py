"""``tp-rag tune``: the tuning grid as a table, and its best cell as a preset file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tp_rag.cli.evaluate import LineNotes, add_eval_options
from tp_rag.cli.options import encoder_from_args, note
from tp_rag.evaluation import write_json
from tp_rag.metrics import RETRIEVAL_METRICS
from tp_rag.progress import Heartbeat
from tp_rag.tuning import TuneResult, parse_candidates, tune, write_preset

if TYPE_CHECKING:
    from tp_rag.datasets import RetrievalSet, StsTask


def grid_table(result: TuneResult, width: int = 80, output: str = "") -> Any:
    """Rows: output layers; columns: tp_stop candidates, then TP off; the best cell marked.

    Transposed (layers run down) and at 3 decimals (2 for Spearman x100) so it reads at
    ``width`` columns; when not every tp_stop fits, the ones nearest the best are shown and
    the caption says where the full grid is (the preset file ``output``).
    """
    from rich.table import Table

    best_stop, best_layer, best_score = result.best
    digits = 2 if result.metric.startswith("Spearman") else 3
    column = 9  # "0.482*" plus padding and a border
    fits = max((width - 2 * column) // column, 1)  # the layer and TP-off columns first
    stops = list(result.tp_stops)
    if len(stops) > fits:  # the best tp_stop and its neighbours
        middle = stops.index(best_stop)
        first = min(max(middle - fits // 2, 0), len(stops) - fits)
        stops = stops[first : first + fits]
    caption = (
        f"tp_start={result.tp_start}; best: tp_stop={best_stop}, output_layer={best_layer} "
        f"({best_score:.4g}); TP off is for reference"
    )
    if len(stops) < len(result.tp_stops):
        hidden = len(result.tp_stops) - len(stops)
        where = f" in {output} (grid)" if output else " in the preset file (grid)"
        caption += f"; {hidden} tp_stop column{'s' if hidden > 1 else ''} not shown: all{where}"
    table = Table(
        title=f"tune: {result.metric}, output_layer (rows) x tp_stop (columns)",
        caption=caption,
    )
    table.add_column("layer", justify="right")
    for stop in stops:
        table.add_column(f"stop {stop}", justify="right")
    table.add_column("TP off", justify="right", style="dim")
    rows = {stop: row for stop, row in zip(result.tp_stops, result.grid, strict=True)}
    for index, layer in enumerate(result.layers):
        cells = []
        for stop in stops:
            text = f"{rows[stop][index]:.{digits}f}"
            best = (stop, layer) == (best_stop, best_layer)
            cells.append(f"[bold]{text}*[/bold]" if best else text)
        table.add_row(str(layer), *cells, f"{result.tp_off[index]:.{digits}f}")
    return table


def run_tune_command(args: argparse.Namespace) -> int:
    """``tp-rag tune``: load, score the grid, print it, write the preset."""
    from tp_rag.datasets import read_beir, read_sts

    if args.tp_stop is not None or args.output_layer is not None:
        raise ValueError("tune searches tp_stop and output_layer: use --tp-stops and --layers")
    data_path = Path(args.data)
    is_beir = data_path.is_dir() and (data_path / "corpus.jsonl").is_file()
    data: StsTask | RetrievalSet = (
        read_beir(data_path, args.split) if is_beir else read_sts(data_path)
    )
    encoder = encoder_from_args(args)
    note(repr(encoder))
    tp_stops = parse_candidates(args.tp_stops) if args.tp_stops else None
    notes = LineNotes()
    passes = len(tp_stops) + 1 if tp_stops else "each tp_stop candidate, and one more"
    notes.start(f"tune: embedding the texts of {data_path} once per tp_stop ({passes} passes)")
    with Heartbeat(notes.beat):
        result = tune(
            encoder,
            data,
            tp_stops=tp_stops,
            layers=parse_candidates(args.layers) if args.layers else None,
            metric=args.metric,
            tmp_dir=args.tmp_dir,
            progress=notes,
        )
    from rich.console import Console

    Console().print(grid_table(result, width=Console().width, output=args.output))
    tuned_on = f"{data_path} ({args.split})" if is_beir else str(data_path)
    preset = write_preset(args.output, encoder, result, tuned_on=tuned_on)
    print(f"wrote {args.output}: {preset['settings']}")
    if args.json:
        write_json(args.json, preset)
    return 0


def register(subparsers: Any) -> None:
    """Add ``tp-rag tune``."""
    tune = subparsers.add_parser(
        "tune",
        help="pick tp_stop and output_layer on a labelled dev set; write a preset",
        description="Grid over tp_stop x output_layer on an STS file or a BEIR split: one "
        "forward pass per text per tp_stop reads out every candidate layer at once. Writes the "
        "best cell as a JSON preset for --preset / from_pretrained(preset=...).",
    )
    tune.add_argument("--data", required=True, metavar="FILE_OR_DIR", help="STS file or BEIR dir")
    tune.add_argument("--split", default="dev", help="BEIR qrels split (default: dev)")
    tune.add_argument(
        "--tp-stops",
        default=None,
        metavar="LIST",
        help="tp_stop candidates, e.g. 2-8 or 3,5,7 (default: tp_start+1 .. ceil(layers/3))",
    )
    tune.add_argument(
        "--layers",
        default=None,
        metavar="LIST",
        help="output_layer candidates (hidden_states indices), e.g. 10-24 (default: 1 .. layers)",
    )
    tune.add_argument(
        "--metric",
        default="nDCG@10",
        choices=RETRIEVAL_METRICS,
        help="retrieval metric to maximise (STS data always uses Spearman)",
    )
    tune.add_argument("--output", required=True, metavar="FILE", help="preset file to write")
    tune.add_argument(
        "--tmp-dir",
        default=None,
        metavar="DIR",
        help="where the per-layer vectors wait to be scored (texts x layers x width x 4 bytes; "
        "default: the system's temporary folder)",
    )
    add_eval_options(tune, baseline=False, cache=False)
    tune.set_defaults(func=run_tune_command)
