"""What the evaluation-side benchmarks share: random models of real shapes, texts, timing, and
appending a section to docs/benchmarks.md with the machine described."""

from __future__ import annotations

import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from tp_rag.testing import tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
GPT2_TOKENIZER = SHARED / "tokenizers" / "gpt2"
DOCS = ROOT / "docs" / "benchmarks.md"

# (layers, hidden, intermediate, attention heads, key/value heads, vocab)
SHAPES: dict[str, tuple[int, int, int, int, int, int]] = {
    "small": (24, 256, 688, 4, 4, 32000),
    "qwen2.5-0.5b": (24, 896, 4864, 14, 2, 151936),
    "llama-2-7b": (32, 4096, 11008, 32, 32, 32000),
}
"""Random Llama-architecture models; ``small`` keeps CPU runs to minutes."""

WORDS = (
    "the committee approved a new budget for schools while engineers measured pressure on the "
    "wing and a man played guitar in the park as stocks fell after the bank raised rates and "
    "rain moved across the river toward the city where children laughed"
).split()


def make_model(directory: Path, shape: str, *, device: str = "cpu", dtype: str = "float32") -> Path:
    """Save a random-weight Llama of ``shape`` (built directly on ``device`` in ``dtype``).

    The tokenizer is GPT-2's real BPE from ../shared when present, else a tiny byte-level one.
    """
    layers, hidden, intermediate, heads, kv_heads, vocab = SHAPES[shape]
    tokenizer = (
        AutoTokenizer.from_pretrained(GPT2_TOKENIZER)
        if GPT2_TOKENIZER.is_dir()
        else tiny_tokenizer(add_bos=True)
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = LlamaConfig(
        vocab_size=max(vocab, len(tokenizer)),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    del model
    return directory


def build_real_shape(source: Path, directory: Path, *, dtype: str, device: str = "cpu") -> Path:
    """``build_random_model.py SOURCE DIRECTORY``: random weights in a real model's shape, built
    in another process so its memory is not the benchmark's."""
    subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("build_random_model.py")),
            str(source),
            str(directory),
            "--dtype",
            dtype,
            "--device",
            device,
        ],
        check=True,
        capture_output=True,
    )
    return directory


def sentences(count: int, seed: int = 0) -> list[str]:
    """Real sentences (STS-B test) when ../shared is present, else synthetic ones of 5-30 words."""
    path = SHARED / "data" / "sts" / "stsbenchmark" / "sts-test.csv"
    if path.is_file():
        rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]
        pool = sorted({s for row in rows for s in row[5:7]})
        return random.Random(seed).sample(pool, count)
    return [
        texts_of_length(random.Random(seed + i).randint(5, 30), 1, seed + i)[0]
        for i in range(count)
    ]


def texts_of_length(words: int, count: int, seed: int = 0) -> list[str]:
    """``count`` synthetic texts of exactly ``words`` words."""
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "." for _ in range(count)
    ]


def timed(run: Callable[[], object]) -> float:
    """Seconds ``run()`` takes, GPU work included (synchronised before and after)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved_best(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Seconds per variant: variants alternate within each round, so load from other work on a
    shared machine hits them alike; the fastest round counts (the least disturbed)."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, run in runs.items():
            best[name] = min(best[name], timed(run))
    return best


def machine() -> str:
    """One line: accelerator or CPU model, cores, memory, torch, and the load when measuring."""
    if torch.cuda.is_available():
        return (
            f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}), torch {torch.__version__}"
        )
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        memory = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
        load = os.getloadavg()[0]
        extra = f", {memory:.0f} GiB, load average {load:.1f} at start"
    except OSError:
        extra = ""
    return f"{cpu}, {os.cpu_count()} cores{extra}, torch {torch.__version__} (CPU)"


def markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *["| " + " | ".join(row) + " |" for row in rows],
    ]


def record(script: str, lines: list[str]) -> None:
    """Append one section (this run, this machine) to docs/benchmarks.md."""
    with DOCS.open("a", encoding="utf-8") as handle:
        handle.write(f"\n## {script} — {time.strftime('%Y-%m-%d')}\n\n" + "\n".join(lines) + "\n")
    print(f"\nappended to {DOCS}")
