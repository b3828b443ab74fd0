"""Build a random-weight model of a real shape: the exact ``config.json`` and tokenizer of a
folder in ../shared/models (or any folder holding a config and tokenizer files), random weights.

The result is a normal model folder (safetensors + config + tokenizer) that every tp-rag entry
point loads: ``make demo MODEL=DIR``, ``tp-rag ingest --model DIR``, the adapters. Its vectors
mean nothing; its shapes, tokenizer, load time, memory and speed are the real model's.

Usage: python benchmarks/build_random_model.py ../shared/models/Qwen--Qwen2.5-0.5B-Instruct DIR
       [--dtype bfloat16|float32] [--device cpu|cuda] [--seed 0]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
)


def build_random_model(
    source: str | Path,
    directory: str | Path,
    *,
    dtype: str = "bfloat16",
    device: str = "cpu",
    seed: int = 0,
) -> Path:
    """Save a causal LM with ``source``'s config and random weights, plus its tokenizer files.

    Weights are made directly on ``device`` in ``dtype`` (a 7B shape in bfloat16 is 13.5 GB).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    source, directory = Path(source), Path(directory)
    config = AutoConfig.from_pretrained(source)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(directory)
    del model
    for name in TOKENIZER_FILES:
        if (source / name).is_file() and not (directory / name).exists():
            shutil.copyfile(source / name, directory / name)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", type=Path, help="folder with config.json and tokenizer files")
    parser.add_argument("directory", type=Path, help="where to write the model")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32", "float16"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    path = build_random_model(
        args.source, args.directory, dtype=args.dtype, device=args.device, seed=args.seed
    )
    print(path)


if __name__ == "__main__":
    main()
