"""What the command line and the demo show: rank-change labels and paths cut to a width."""

from __future__ import annotations

from tp_rag.cli.display import describe_change, rank_change, short_path
from tp_rag.store import Hit


def hit(id_: str, rank: int) -> Hit:
    return Hit(id_, "t", "s", 0, 0, 1, 0.5, rank)


def test_rank_changes_between_the_two_lists() -> None:
    """rank_change is how many places higher a hit ranks here than in the other list."""
    on = [hit("a", 1), hit("b", 2), hit("c", 3)]
    off = [hit("b", 1), hit("a", 2), hit("d", 3)]
    assert [rank_change(h, off) for h in on] == [1, -1, None]
    assert [describe_change(rank_change(h, off), "TP on") for h in on] == ["▲1", "▼1", "only TP on"]
    assert describe_change(0, "TP off") == "="


def test_short_path_keeps_the_file_name() -> None:
    """A long path loses folders from the left first; the file name is cut only when it alone
    is too long; a short path is left as it is."""
    path = "/home/someone/projects/notes/2024/glaciers-and-valleys.txt"
    assert short_path(path, 100) == path
    assert short_path(path, 35) == "…/2024/glaciers-and-valleys.txt"
    assert short_path(path, 26) == "…/glaciers-and-valleys.txt"
    assert short_path(path, 10) == "…lleys.txt"  # ten characters
    assert all(len(short_path(path, width)) <= width for width in range(2, 70))
