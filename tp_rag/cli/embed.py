"""``tp-rag embed``: embed a few texts and print their similarities, TP on and off."""

from __future__ import annotations

import argparse
from typing import Any

from tp_rag.cli.options import add_encoder_options, encoder_from_args


def run_embed(args: argparse.Namespace) -> int:
    """Print the cosine-similarity matrix of ``args.texts`` with TP on and with TP off."""
    encoder = encoder_from_args(args)
    texts = args.texts
    print(encoder)
    for label, tp in (("TP on", True), ("TP off", False)):
        vectors = encoder.encode(texts, tp=tp)
        similarity = vectors @ vectors.T
        fingerprint = encoder.config.replace(tp=tp).fingerprint()
        print(f"\ncosine similarity, {label} (fingerprint {fingerprint})")
        for i, text in enumerate(texts):
            cells = " ".join(f"{value:6.3f}" for value in similarity[i])
            print(f"{cells}  {text[:60]}")
    return 0


def register(subparsers: Any) -> None:
    """Add ``tp-rag embed``."""
    embed = subparsers.add_parser("embed", help="embed a few texts and print their similarities")
    embed.add_argument("texts", nargs="+", help="texts to embed")
    add_encoder_options(embed)
    embed.set_defaults(func=run_embed)
