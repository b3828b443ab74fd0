"""Reading documents (``.txt``, ``.md``, ``.pdf``, ``.html``) and splitting them into chunks.

Chunk sizes count tokens of the encoder's own tokenizer, so a chunk of ``chunk_size`` tokens
fits the encoder's ``max_length`` together with its prompt template.

>>> from tp_rag.documents import find_files, read_document, split_text
>>> files, skipped = find_files(["notes/"])  # doctest: +SKIP
>>> chunks = split_text(read_document(files[0]), encoder.tokenizer)  # doctest: +SKIP
>>> chunks[0].text == read_document(files[0])[chunks[0].start : chunks[0].end]  # doctest: +SKIP
True
"""

from __future__ import annotations

import codecs
import io
import logging
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tp_rag.errors import DocumentError

DEFAULT_CHUNK_SIZE = 256
"""Tokens per chunk: short enough for retrieval to point at a passage, long enough for context."""
DEFAULT_CHUNK_OVERLAP = 32
"""Tokens shared by neighbouring chunks, so a sentence cut at a boundary is whole in one."""

SUFFIXES: tuple[str, ...] = (".txt", ".md", ".pdf", ".html", ".htm")
"""File types ``read_document`` understands."""

_SNIFF_BYTES = 8192  # a NUL byte in the first 8 KiB marks a binary file, as git and grep do
# Text files that start with a byte-order mark are decoded by it (UTF-32 before UTF-16: the
# UTF-32-LE mark begins with the UTF-16-LE one).
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_SPECIAL_FILES = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


@dataclass(frozen=True)
class Chunk:
    """A piece of a document's text: ``text == document[start:end]``."""

    text: str
    index: int
    start: int
    end: int


def find_files(paths: Iterable[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand files and folders (recursively) into the readable files, sorted, without repeats.

    Returns ``(files, skipped)``; ``skipped`` holds ``(path, reason)`` for paths that do not
    exist and for files named explicitly whose type is not one of ``SUFFIXES``. Inside folders,
    other file types and hidden files and folders are passed over silently.

    Each file is named by the path the user's folder gives it: the folder's absolute path (its
    own links resolved) joined with the names inside it, never the target of a link found
    inside it. A link to a file, wherever the file lives, is read as a file of the folder under
    the link's name (the name the user sees, and the one that disappears when the link does, so
    ``prune`` sees it go); links to folders are not followed (they could loop). The walk uses
    its own stack, so folder depth is limited only by the file system.
    """
    files: list[Path] = []
    skipped: list[tuple[str, str]] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        if path not in seen:
            seen.add(path)
            files.append(path)

    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for child in _walk(path.resolve()):
                add(child)
        elif path.is_file():
            if path.suffix.lower() in SUFFIXES:
                add(path.absolute().parent.resolve() / path.name)
            else:
                skipped.append(
                    (str(path), f"unsupported file type; tp-rag reads {', '.join(SUFFIXES)}")
                )
        else:
            skipped.append((str(path), _not_a_file(path)))
    return files, skipped


def _walk(root: Path) -> list[Path]:
    """The supported, visible files under ``root`` (links to files included, links to folders
    not followed), sorted; iterative, so any depth works."""
    found: list[Path] = []
    folders = [root]
    while folders:
        folder = folders.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:  # unreadable or vanished meanwhile: nothing of it can be read
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                folders.append(folder / entry.name)
            elif entry.is_file() and Path(entry.name).suffix.lower() in SUFFIXES:
                found.append(folder / entry.name)
    return sorted(found)


def _not_a_file(path: Path) -> str:
    """Why ``path``, neither a regular file nor a folder, is skipped."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return "no such file or folder"
    for test, what in _SPECIAL_FILES:
        if test(mode):
            return f"not a regular file but {what}; tp-rag reads files and folders"
    return "not a regular file or folder"


def read_document(path: str | Path) -> str:
    """The text of one file; raises ``DocumentError`` naming the file and the problem.

    ``.txt`` and ``.md`` must be UTF-8, or UTF-16 / UTF-32 with a byte-order mark; ``.pdf``
    is read with pypdf (its text layer); ``.html`` loses scripts, styles and markup.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DocumentError(f"{path}: unreadable ({error.strerror or error})") from None
    if not data.strip():
        raise DocumentError(f"{path}: empty file")
    suffix = path.suffix.lower()
    bom = next((codec for mark, codec in _BOMS if data.startswith(mark)), None)
    if suffix == ".pdf":
        text = _pdf_text(path, data)
    elif bom is not None:
        try:
            decoded = data.decode(bom)
        except UnicodeDecodeError as error:
            raise DocumentError(f"{path}: not valid {bom} text ({error.reason})") from None
        text = _html_text(decoded) if suffix in (".html", ".htm") else decoded.lstrip("\ufeff")
    else:
        if b"\x00" in data[:_SNIFF_BYTES]:
            raise DocumentError(f"{path}: binary file, not {suffix} text")
        text = _html_text(data) if suffix in (".html", ".htm") else _utf8(path, data)
    if not text.strip():
        raise DocumentError(f"{path}: no text in it")
    return text


def _utf8(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DocumentError(
            f"{path}: not UTF-8 text (byte {error.start}); convert it to UTF-8"
        ) from None


def _pdf_text(path: Path, data: bytes) -> str:
    from pypdf import PdfReader

    if not data.startswith(b"%PDF-"):
        raise DocumentError(f"{path}: corrupt PDF (no %PDF header)")
    # pypdf logs its repairs of damaged files; we report the file once instead.
    pypdf_logger = logging.getLogger("pypdf")
    level = pypdf_logger.level
    pypdf_logger.setLevel(logging.CRITICAL)
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise DocumentError(f"{path}: encrypted PDF")
        pages = [page.extract_text() or "" for page in reader.pages]
    except DocumentError:
        raise
    # pypdf reports damage through many exception types (its own, KeyError, ValueError, ...);
    # whichever it raises, the file is corrupt for our purposes.
    except Exception as error:
        raise DocumentError(f"{path}: corrupt PDF ({type(error).__name__}: {error})") from None
    finally:
        pypdf_logger.setLevel(level)
    return "\n\n".join(page.strip() for page in pages)


def _html_text(data: bytes | str) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(data, "html.parser")
    for element in soup(["script", "style", "noscript", "template"]):
        element.decompose()
    lines = (line.strip() for line in soup.get_text("\n").splitlines())
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def check_chunking(chunk_size: int, chunk_overlap: int) -> None:
    """Raise ``ValueError`` unless the sizes (in tokens) can cut a text into chunks."""
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be a positive number of tokens")
    if not isinstance(chunk_overlap, int) or not 0 <= chunk_overlap < chunk_size:
        raise ValueError(
            f"chunk_overlap={chunk_overlap!r} must be >= 0 and smaller than chunk_size={chunk_size}"
        )


def split_text(
    text: str,
    tokenizer: Any,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
) -> list[Chunk]:
    """Split ``text`` into chunks of at most ``chunk_size`` tokens of ``tokenizer``.

    Uses langchain's ``RecursiveCharacterTextSplitter`` (paragraphs, then lines, then words)
    and records each chunk's character span in ``text``.

    >>> chunks = split_text("One.\\n\\nTwo.", encoder.tokenizer, chunk_size=4)  # doctest: +SKIP
    >>> [(c.text, c.start, c.end) for c in chunks]  # doctest: +SKIP
    [('One.', 0, 4), ('Two.', 6, 10)]
    """
    check_chunking(chunk_size, chunk_overlap)
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    splitter = RecursiveCharacterTextSplitter.from_huggingface_tokenizer(
        tokenizer, chunk_size=chunk_size, chunk_overlap=chunk_overlap
    )
    chunks: list[Chunk] = []
    cursor = 0
    for piece in splitter.split_text(text):
        # Chunks come in document order and are substrings of it; overlapping chunks start
        # after the previous one's start, so search from there (langchain's own start_index
        # mixes token and character counts when lengths are measured in tokens).
        start = text.find(piece, cursor)
        if start < 0:
            start = text.find(piece)
        chunks.append(Chunk(piece, len(chunks), start, start + len(piece)))
        cursor = start + 1
    return chunks
