"""Benchmark the TP encoder core: TP cost, early exit vs the authors' style, peak memory.

Prints, for one run on one machine, a table of ratios on a random Llama-shaped model:
  (a) TP on / TP off time                               (goal <= 1.03)
  (b) authors' style / tp-rag time                      (goal >= 1.3)
  (c) peak memory of both (CUDA: max allocated; CPU: peak RSS growth, each in a fresh process)

"Authors' style" computes the same vectors the way the paper's code does: the causal LM's full
forward with ``output_hidden_states=True`` through every layer and the LM head, batches in input
order, then ``hidden_states[output_layer][:, -1]``. TP is the same overwrite in both.

Usage: python benchmarks/bench_encoder.py [--shape small|qwen2.5-0.5b|llama-2-7b] [--texts 200]
       [--device cpu|cuda] [--dtype float32|bfloat16] [--record]
"""

from __future__ import annotations

import argparse
import copy
import random
import resource
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from _common import SHAPES, interleaved_best, machine, make_model, markdown, record, texts_of_length

from tp_rag import TPEncoder
from tp_rag.prompts import clean_sentence, render


class PeakRSS:
    """Peak growth of this process's resident memory while the block runs (sampled every 2 ms)."""

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize()

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    @property
    def mib(self) -> float:
        return (self.peak - self.start) / 2**20


def make_texts(count: int, seed: int = 0) -> list[str]:
    """Mixed lengths: 4 to 90 words, deterministic."""
    rng = random.Random(seed)
    return [texts_of_length(rng.randint(4, 90), 1, seed + i)[0] for i in range(count)]


def authors_style(encoder: TPEncoder, model_dir: Path) -> Callable[[list[str]], np.ndarray]:
    """The paper code's way: full causal-LM forward, all hidden states, input-order batches.

    Loads the causal LM (with its head) once and returns the function that embeds texts.
    """
    from transformers import AutoModelForCausalLM

    config, loaded = encoder.config, encoder._loaded
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=loaded.dtype).to(loaded.device)
    model.resize_token_embeddings(
        loaded.model.get_input_embeddings().weight.shape[0], mean_resizing=False
    )
    model.get_input_embeddings().weight.data.copy_(loaded.model.get_input_embeddings().weight)
    model.eval()
    tokenizer = copy.deepcopy(loaded.tokenizer)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    template = config.templates[0]
    layers = model.model.layers
    state: dict[str, torch.Tensor] = {}

    def overwrite(module: torch.nn.Module, args: tuple) -> None:
        hidden = args[0]
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        hidden[rows, state["pst"]] = hidden[:, -1].clone()

    def embed(texts: list[str]) -> np.ndarray:
        prompts = [render(template, clean_sentence(t), tp=True).text for t in texts]
        handles = [
            layers[i].register_forward_pre_hook(overwrite)
            for i in range(config.tp_start, config.tp_stop)
        ]
        out = []
        try:
            with torch.inference_mode():
                for start in range(0, len(prompts), config.batch_size):
                    batch = tokenizer(
                        prompts[start : start + config.batch_size],
                        return_tensors="pt",
                        padding=True,
                    ).to(loaded.device)
                    state["pst"] = (batch["input_ids"] == loaded.placeholder_id).int().argmax(1)
                    position_ids = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
                    result = model(**batch, position_ids=position_ids, output_hidden_states=True)
                    out.append(result.hidden_states[config.output_layer][:, -1].float().cpu())
        finally:
            for handle in handles:
                handle.remove()
        vectors = torch.cat(out).numpy()
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    return embed


def peak_memory_child(args: argparse.Namespace, model_dir: Path, variant: str) -> float:
    """Peak memory (MiB) of one variant's encoding, measured in a fresh process."""
    run = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            variant,
            "--model-dir",
            str(model_dir),
            "--texts",
            str(args.texts),
            "--device",
            args.device,
            "--dtype",
            args.dtype,
            "--batch-size",
            str(args.batch_size),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(run.stdout.strip().splitlines()[-1])


def child(args: argparse.Namespace) -> None:
    encoder = TPEncoder.from_pretrained(
        args.model_dir, device=args.device, dtype=args.dtype, batch_size=args.batch_size
    )
    texts = make_texts(args.texts)
    cuda = encoder._loaded.device.type == "cuda"
    if args.child == "tp-rag":
        run = lambda: encoder.encode(texts)  # noqa: E731
    else:
        # The authors' model is loaded before measuring: count activations, not weights.
        authors = authors_style(encoder, args.model_dir)
        run = lambda: authors(texts)  # noqa: E731
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        print((torch.cuda.max_memory_allocated() - base) / 2**20)
    else:
        with PeakRSS() as peak:
            run()
        print(peak.mib)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument("--texts", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument(
        "--record", action="store_true", help="append the table to docs/benchmarks.md"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model(Path(tmp) / "llama", args.shape, dtype=args.dtype)
        encoder = TPEncoder.from_pretrained(
            model_dir, device=args.device, dtype=args.dtype, batch_size=args.batch_size
        )
        texts = make_texts(args.texts)
        template = encoder.config.templates[0]
        tokens_on, tokens_off = (
            sum(
                len(encoder.tokenizer(render(template, clean_sentence(t), tp=tp).text).input_ids)
                for t in texts
            )
            for tp in (True, False)
        )
        authors = authors_style(encoder, model_dir)
        # Same vectors? (guards the comparison, not a test)
        same = np.abs(authors(texts[:8]) - encoder.encode(texts[:8])).max()

        encoder.encode(texts[:32])  # warm-up
        seconds = interleaved_best(
            {
                "on": lambda: encoder.encode(texts),
                "off": lambda: encoder.encode(texts, tp=False),
                "authors": lambda: authors(texts),
            },
            args.repeats,
        )
        t_on, t_off, t_authors = seconds["on"], seconds["off"], seconds["authors"]
        mem_ours = peak_memory_child(args, model_dir, "tp-rag")
        mem_authors = peak_memory_child(args, model_dir, "authors")

    c = encoder.config
    rows = [
        ("(a) TP on / TP off time", f"{t_on / t_off:.3f}", "<= 1.03"),
        (
            "(a) TP on / TP off prompt tokens (`<PST>` and its space)",
            f"{tokens_on / tokens_off:.3f}",
            "",
        ),
        ("(b) authors' style / tp-rag time", f"{t_authors / t_on:.2f}", ">= 1.3"),
        ("(c) peak memory, tp-rag (MiB)", f"{mem_ours:.0f}", ""),
        ("(c) peak memory, authors' style (MiB)", f"{mem_authors:.0f}", ""),
        ("(c) authors' / tp-rag peak memory", f"{mem_authors / max(mem_ours, 1e-9):.1f}", ""),
    ]
    table = [
        f"Machine: {machine()}",
        f"Model: random Llama, shape {args.shape} (layers, hidden, intermediate, heads, kv heads, "
        f"vocab = {SHAPES[args.shape]}), {args.dtype}; "
        f"TP layers [{c.tp_start}, {c.tp_stop}), output_layer {c.output_layer}; "
        f"{len(texts)} texts, {tokens_on} prompt tokens (TP on), batch {args.batch_size}, "
        f"best of {args.repeats} interleaved rounds",
        f"Seconds: TP on {t_on:.2f}, TP off {t_off:.2f}, authors' style {t_authors:.2f}; "
        f"max |authors - tp-rag| on 8 texts = {same:.1e}",
        "",
        *markdown(["measure", "value", "goal"], [list(row) for row in rows]),
    ]
    print("\n".join(table))
    if args.record:
        record("bench_encoder.py", table)


if __name__ == "__main__":
    main()
