"""Reading files and splitting them into token-sized chunks (tp_rag.documents)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tp_rag.documents import (
    DocumentError,
    check_chunking,
    find_files,
    read_document,
    split_text,
)

TEXT = (
    "Tides rise twice a day because the Moon pulls the oceans.\n\n"
    "A star fuses hydrogen into helium in its core for most of its life. "
    "When the hydrogen runs out, the star swells into a red giant.\n\n"
    "Bread rises because yeast makes gas; bacteria make the sour taste."
)


def pdf_bytes(text: str) -> bytes:
    """A minimal valid one-page PDF showing ``text`` in Helvetica (correct xref offsets)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 5 0 R >> >> /Contents 4 0 R >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


@pytest.fixture(scope="module")
def tokenizer(tiny_llama: Path):
    return AutoTokenizer.from_pretrained(tiny_llama)


def test_find_files_expands_folders_and_reports_what_it_cannot_read(tmp_path: Path) -> None:
    """Folders are searched recursively for the supported types (sorted, no repeats, no hidden
    files); a missing path and an explicitly named unsupported file are reported, not dropped."""
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / ".hidden").mkdir()
    for name in ("b.md", "a.txt", "sub/c.html", "sub/d.pdf", "sub/e.htm", ".hidden/x.txt"):
        (tmp_path / "docs" / name).write_text("x")
    (tmp_path / "docs" / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / "notes.docx").write_text("x")

    files, skipped = find_files(
        [tmp_path / "docs", tmp_path / "docs" / "a.txt", tmp_path / "notes.docx", tmp_path / "nope"]
    )

    names = [f.relative_to(tmp_path / "docs").as_posix() for f in files]
    assert names == ["a.txt", "b.md", "sub/c.html", "sub/d.pdf", "sub/e.htm"]
    assert all(f.is_absolute() for f in files)
    reasons = dict(skipped)
    assert set(reasons) == {str(tmp_path / "notes.docx"), str(tmp_path / "nope")}
    assert "unsupported file type" in reasons[str(tmp_path / "notes.docx")]
    assert "no such file" in reasons[str(tmp_path / "nope")]


def test_read_text_markdown_html_and_pdf(tmp_path: Path) -> None:
    """Each supported type gives its text: UTF-8 (BOM dropped), HTML without scripts and
    styles, and a PDF's text layer through pypdf."""
    (tmp_path / "a.txt").write_bytes("\ufeffcafé au lait".encode())
    (tmp_path / "b.md").write_text("# Title\n\nBody text.", encoding="utf-8")
    (tmp_path / "c.html").write_text(
        "<html><head><title>Page</title><style>p {color: red}</style></head>"
        "<body><h1>Heading</h1><p>Visible <b>words</b>.</p><script>var hidden = 1;</script>"
        "</body></html>"
    )
    (tmp_path / "d.pdf").write_bytes(pdf_bytes("Glaciers carve valleys"))

    assert read_document(tmp_path / "a.txt") == "café au lait"
    assert read_document(tmp_path / "b.md") == "# Title\n\nBody text."
    html = read_document(tmp_path / "c.html")
    assert "Heading" in html and "Visible" in html and "words" in html
    assert "hidden" not in html and "color" not in html
    assert "Glaciers carve valleys" in read_document(tmp_path / "d.pdf")


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.txt", b"", "empty"),
        ("blank.md", b"  \n\t\n", "empty"),
        ("binary.txt", b"abc\x00\x01\x02def", "binary"),
        ("latin1.md", "déjà vu".encode("latin-1"), "not UTF-8"),
        ("corrupt.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog", "corrupt PDF"),
        ("fake.pdf", b"this is not a pdf at all", "corrupt PDF"),
        ("script.html", b"<html><script>only code</script></html>", "no text"),
        ("binary.html", b"<html>\x00\x00</html>", "binary"),
    ],
)
def test_bad_files_raise_an_error_naming_the_file(
    tmp_path: Path, name: str, content: bytes, reason: str
) -> None:
    """Unreadable, empty, binary or corrupt files raise DocumentError with path and cause."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DocumentError) as error:
        read_document(path)
    assert str(path) in str(error.value)
    assert reason in str(error.value)


def test_unreadable_path_is_a_document_error(tmp_path: Path) -> None:
    """An OSError while reading becomes a DocumentError (ingestion skips the file)."""
    folder = tmp_path / "folder.txt"
    folder.mkdir()
    with pytest.raises(DocumentError, match="unreadable"):
        read_document(folder)


def test_chunks_are_spans_of_the_text_within_the_token_budget(tokenizer) -> None:
    """Every chunk is ``text[start:end]``, at most chunk_size tokens, numbered in order, and
    together the chunks cover every word of the text."""
    chunks = split_text(TEXT, tokenizer, chunk_size=24, chunk_overlap=6)
    assert len(chunks) > 3
    covered = [False] * len(TEXT)
    for index, chunk in enumerate(chunks):
        assert chunk.index == index
        assert TEXT[chunk.start : chunk.end] == chunk.text
        assert len(tokenizer.tokenize(chunk.text)) <= 24
        covered[chunk.start : chunk.end] = [True] * (chunk.end - chunk.start)
    assert all(covered[i] for i, char in enumerate(TEXT) if not char.isspace())
    assert [c.start for c in chunks] == sorted(c.start for c in chunks)


def test_overlap_repeats_text_across_chunk_boundaries(tokenizer) -> None:
    """With an overlap, neighbouring chunks of one paragraph share text; without, they don't."""
    paragraph = " ".join(f"word{i}" for i in range(80))
    overlapping = split_text(paragraph, tokenizer, chunk_size=30, chunk_overlap=10)
    disjoint = split_text(paragraph, tokenizer, chunk_size=30, chunk_overlap=0)
    assert any(a.end > b.start for a, b in itertools.pairwise(overlapping))
    assert all(a.end <= b.start for a, b in itertools.pairwise(disjoint))


def test_repeated_text_gets_the_right_spans(tokenizer) -> None:
    """A paragraph that occurs twice yields two chunks with their own positions."""
    text = "Same paragraph here.\n\nSomething else.\n\nSame paragraph here."
    chunks = split_text(text, tokenizer, chunk_size=20, chunk_overlap=0)
    same = [c for c in chunks if c.text == "Same paragraph here."]
    assert [c.start for c in same] == [0, text.rindex("Same")]


@pytest.mark.parametrize(("size", "overlap"), [(0, 0), (-5, 0), (10, 10), (10, -1), (True, 0)])
def test_invalid_chunk_sizes_are_refused(size: int, overlap: int) -> None:
    """Sizes must be positive and the overlap smaller than the size."""
    with pytest.raises(ValueError, match="chunk_"):
        check_chunking(size, overlap)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
def test_text_with_a_byte_order_mark_is_decoded(tmp_path: Path, encoding: str) -> None:
    """UTF-16 and UTF-32 text files (as Windows editors save them, with a BOM) are read, not
    taken for binary files; HTML too."""
    text = "Tides come twice a day. Café."

    def with_bom(content: str) -> bytes:  # "utf-16-be" writes no BOM of its own
        if encoding.endswith("-be"):
            content = "\ufeff" + content
        return content.encode(encoding)

    (tmp_path / "a.txt").write_bytes(with_bom(text))
    (tmp_path / "b.html").write_bytes(with_bom(f"<html><body><p>{text}</p></body></html>"))
    assert read_document(tmp_path / "a.txt") == text
    assert read_document(tmp_path / "b.html") == text


def test_a_fifo_named_on_the_command_line_is_reported_as_such(tmp_path: Path) -> None:
    """A named pipe given as a path is skipped as what it is (reading it would block), not as
    'no such file'; a device file likewise."""
    import os

    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    files, skipped = find_files([fifo, "/dev/null"])
    assert files == []
    reasons = dict(skipped)
    assert "named pipe (FIFO)" in reasons[str(fifo)]
    assert "character device" in reasons["/dev/null"]


def test_find_files_names_linked_files_by_the_folders_path(tmp_path: Path) -> None:
    """A link inside a folder is a file of that folder under the link's own name, even when its
    target lives elsewhere; a link to a folder is not followed (it could loop); a link named
    on the command line keeps its name too."""
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "target.txt").write_text("x")
    (outside / "sub" / "deep.txt").write_text("x")
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "own.md").write_text("x")
    (folder / "link.txt").symlink_to(outside / "target.txt")
    (folder / "loop").symlink_to(folder)
    (folder / "elsewhere").symlink_to(outside / "sub")

    files, skipped = find_files([folder])
    assert files == [folder.resolve() / "link.txt", folder.resolve() / "own.md"]
    assert skipped == []
    named, _ = find_files([folder / "link.txt"])
    assert named == [folder.resolve() / "link.txt"]


def test_find_files_walks_any_depth(tmp_path: Path) -> None:
    """1,500 nested folders (deeper than Python's recursion limit) are walked, not crashed on."""
    import os
    import sys

    depth = 1500
    assert depth > sys.getrecursionlimit()
    top = tmp_path / "deep"
    bottom = top.joinpath(*["d"] * depth)
    for n in range(depth + 1):  # Path.mkdir(parents=True) itself recurses
        os.mkdir(top.joinpath(*["d"] * n))
    try:
        (top / "top.txt").write_text("x")
        (bottom / "bottom.md").write_text("x")
        files, skipped = find_files([top])
        assert files == [bottom.resolve() / "bottom.md", top.resolve() / "top.txt"]  # sorted
        assert skipped == []
    finally:  # the tree is too deep for a recursive rmtree at teardown: remove it bottom up
        for folder in [top.joinpath(*["d"] * n) for n in range(depth, -1, -1)]:
            for file in folder.glob("*.*"):
                file.unlink()
            os.rmdir(folder)
