"""The tp-rag command line: the embed smoke command and error reporting."""

from __future__ import annotations

from pathlib import Path

import pytest

from tp_rag.cli import main


def test_embed_prints_similarities_for_tp_on_and_off(
    tiny_llama: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tp-rag embed` prints a similarity matrix with a unit diagonal for TP on and off."""
    assert main(["embed", "--model", str(tiny_llama), "A cat.", "A dog."]) == 0
    out = capsys.readouterr().out
    assert "TP on" in out and "TP off" in out
    assert out.count(" 1.000") == 4  # two diagonals of two


def test_bad_option_is_a_clean_error(tiny_llama: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad setting exits with status 2 and a one-line message, not a traceback."""
    assert (
        main(["embed", "--model", str(tiny_llama), "--tp-start", "5", "--tp-stop", "2", "x"]) == 2
    )
    assert "error: tp_start=5 must be smaller than tp_stop=2" in capsys.readouterr().err
