"""The Gradio demo: the top layer beside ``tp_rag.cli`` (``tp-rag demo`` starts it).

``tp_rag.demo.app`` holds the handlers (``Demo``) and the page (``build_app``); it imports
gradio, so it is imported only when the demo runs. This package itself is light: the command
line reads ``SAMPLE`` (``tp-rag eval retrieval --data sample``) without loading gradio.
"""

from __future__ import annotations

from pathlib import Path

SAMPLE = Path(__file__).resolve().parent / "sample"
"""The bundled sample corpus (``docs/``) and its labelled queries (BEIR ``queries.jsonl``,
``qrels/test.tsv``), written for this project; shipped as package data."""
