"""``tp-rag tune``: the tuning grid as a table, and its best cell as a preset file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tp_rag.cli.evaluate import add_eval_options
from tp_rag.cli.options import console, encoder_from_args, note
from tp_rag.evaluation import write_json
from tp_rag.metrics import RETRIEVAL_METRICS
from tp_rag.tuning import TuneResult, parse_candidates, tune, write_preset

if TYPE_CHECKING:
    from tp_rag.datasets import RetrievalSet, StsTask


def grid_table(result: TuneResult) -> Any:
    """Rows: tp_stop candidates (and TP off); columns: output layers; the best cell marked."""
    from rich.table import Table

    best_stop, best_layer, best_score = result.best
    table = Table(
        title=f"tune: {result.metric}, tp_stop (rows) x output_layer (columns)",
        caption=f"tp_start={result.tp_start}; best: tp_stop={best_stop}, "
        f"output_layer={best_layer} ({best_score:.4g}); TP off is for reference",
    )
    table.add_column("tp_stop")
    for layer in result.layers:
        table.add_column(str(layer), justify="right")
    for stop, row in zip(result.tp_stops, result.grid, strict=True):
        cells = []
        for layer, value in zip(result.layers, row, strict=True):
            text = f"{value:.2f}" if result.metric.startswith("Spearman") else f"{value:.4f}"
            cells.append(
                f"[bold]{text}*[/bold]" if (stop, layer) == (best_stop, best_layer) else text
            )
        table.add_row(str(stop), *cells)
    digits = 2 if result.metric.startswith("Spearman") else 4
    table.add_row("TP off", *(f"{v:.{digits}f}" for v in result.tp_off), style="dim")
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
    result = tune(
        encoder,
        data,
        tp_stops=parse_candidates(args.tp_stops) if args.tp_stops else None,
        layers=parse_candidates(args.layers) if args.layers else None,
        metric=args.metric,
        tmp_dir=args.tmp_dir,
    )
    console().print(grid_table(result))
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
