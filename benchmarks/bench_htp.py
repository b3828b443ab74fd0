"""HTP's cost: hierarchical Token Prepending on passages, against HTP off and against TP.

A random-weight model of a real shape (``--shape``, default Qwen2.5-0.5B-Instruct, built by
build_random_model.py) embeds the first ``--passages`` Cranfield passages (title + text) with
``method="htp"`` (on and off) and ``method="tp"`` (on), timed in interleaved rounds after a
warm-up (best round). Printed:

- HTP on / HTP off: time ratio against prompt-token ratio (HTP adds two placeholders a
  sentence; goal: time ratio <= token ratio x 1.03, i.e. the overwrites cost no more than the
  tokens they add);
- the sentence splitter's share of HTP's encode time (goal < 2%);
- HTP on / TP on time.

CPU:  python benchmarks/bench_htp.py --record
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SHARED, build_real_shape, interleaved_best, machine, markdown, record
from bench_real_shape import cranfield_passages

from tp_rag import TPEncoder
from tp_rag.sentences import sentence_ends, splitter_id

MODELS = SHARED / "models"


def prompt_tokens(encoder: TPEncoder, texts: list[str], *, tp: bool) -> int:
    return sum(len(f.input_ids) for f in encoder.tokenize(texts, tp=tp))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", default="Qwen--Qwen2.5-0.5B-Instruct")
    parser.add_argument("--model", type=Path, default=None, help="an already built model folder")
    parser.add_argument("--passages", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (best)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    where = machine()
    texts = cranfield_passages(args.passages)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            model_dir = Path(tmp) / "model"
            build_real_shape(MODELS / args.shape, model_dir, dtype="float32")
        common = {"device": "cpu", "dtype": "float32", "batch_size": args.batch_size}
        htp = TPEncoder.from_pretrained(model_dir, method="htp", **common)
        tp = TPEncoder.from_pretrained(model_dir, method="tp", **common)
        print(htp, tp, sep="\n")
        runs = {
            "HTP on": lambda: htp.encode(texts, tp=True, show_progress=False),
            "HTP off": lambda: htp.encode(texts, tp=False, show_progress=False),
            "TP on": lambda: tp.encode(texts, tp=True, show_progress=False),
        }
        for run in runs.values():  # warm-up
            run()
        seconds = interleaved_best(runs, args.repeats)
        tokens = {
            "HTP on": prompt_tokens(htp, texts, tp=True),
            "HTP off": prompt_tokens(htp, texts, tp=False),
            "TP on": prompt_tokens(tp, texts, tp=True),
        }
    rounds = 50
    start = time.perf_counter()
    for _ in range(rounds):
        for text in texts:
            sentence_ends(text)
    split_seconds = (time.perf_counter() - start) / rounds
    sentences = sum(len(sentence_ends(t)) for t in texts)

    token_ratio = tokens["HTP on"] / tokens["HTP off"]
    time_ratio = seconds["HTP on"] / seconds["HTP off"]
    split_share = split_seconds / seconds["HTP on"]
    rows = [
        [name, f"{seconds[name]:.2f}", f"{len(texts) / seconds[name]:.1f}", str(tokens[name])]
        for name in runs
    ]
    lines = [
        f"Machine: {where}. Model: random weights, {args.shape} shape, float32, "
        f"batch_size {args.batch_size}, best of {args.repeats} interleaved rounds. "
        f"Data: the first {len(texts)} Cranfield passages ({sentences} sentences by "
        f"{splitter_id()}).",
        "",
        *markdown(["encoder", "seconds", "passages/s", "prompt tokens"], rows),
        "",
        f"- HTP on / HTP off: time x{time_ratio:.3f}, prompt tokens x{token_ratio:.3f}; "
        f"time / token ratio {time_ratio / token_ratio:.3f} (goal <= 1.03)",
        f"- sentence splitting: {split_seconds * 1000:.2f} ms for the {len(texts)} passages, "
        f"{split_share:.3%} of HTP on's encode time (goal < 2%)",
        f"- HTP on / TP on: time x{seconds['HTP on'] / seconds['TP on']:.3f}",
    ]
    print("\n".join(lines))
    if args.record:
        record("bench_htp.py", lines)


if __name__ == "__main__":
    main()
