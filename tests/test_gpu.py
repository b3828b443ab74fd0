"""On a CUDA device (deselected by default; run with `pytest -m gpu` on a GPU machine)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tp_rag import TPEncoder

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

TEXTS = ["A man is playing a guitar.", "Stocks fell sharply.", "Is it raining in Paris?"]


def test_cuda_auto_dtype_is_bfloat16_and_matches_cpu(tiny_llama: Path) -> None:
    """device='auto' picks CUDA in bfloat16; vectors agree with CPU float32 (cosine > 0.99)."""
    gpu = TPEncoder.from_pretrained(tiny_llama)
    assert gpu._loaded.device.type == "cuda" and gpu._loaded.dtype == torch.bfloat16
    cpu = TPEncoder.from_pretrained(tiny_llama, device="cpu", dtype="float32")
    for tp in (True, False):
        cosine = np.sum(gpu.encode(TEXTS, tp=tp) * cpu.encode(TEXTS, tp=tp), axis=1)
        assert (cosine > 0.99).all(), cosine
    assert gpu.config.fingerprint() == cpu.config.fingerprint()


def test_cuda_float32_batch_invariance(tiny_models: dict[str, Path]) -> None:
    """On the GPU in float32 too, a text's vector does not depend on its batch."""
    encoder = TPEncoder.from_pretrained(tiny_models["gpt2"], device="cuda", dtype="float32")
    batched = encoder.encode([*TEXTS, "A much longer text that pads the others. " * 8])
    for row, text in enumerate(TEXTS):
        assert np.abs(batched[row] - encoder.encode(text)).max() <= 1e-4


@pytest.mark.parametrize("shape", ["meta-llama--Llama-2-7b-hf", "Qwen--Qwen2-7B-Instruct"])
def test_real_shape_benchmark_runs_on_the_gpu(shape: str, shared_dir: Path) -> None:
    """The real-shape benchmark (random weights, exact 7B config and tokenizer, bfloat16) runs
    end to end and reports a fraction of the card's bf16 peak for every row. The speed goals
    themselves are read from its table (docs/benchmarks.md), not asserted here. Full run:
    python benchmarks/bench_real_shape.py --device cuda --dtype bfloat16 --shape SHAPE
    --sentences 2048 --passages 512 --record"""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, str(root / "benchmarks" / "bench_real_shape.py"), "--shape", shape]
    command += ["--device", "cuda", "--dtype", "bfloat16", "--sentences", "256", "--passages", "64"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| tp-rag TP on")]
    assert len(rows) == 2 and all("n/a" not in row for row in rows), result.stdout
