"""tp-rag's errors: one base class, and each error also the built-in a caller would catch.

Everything tp-rag raises on purpose about the user's input or surroundings (a bad file, a model
that cannot be found, a store built with another encoder, ...) is a ``TPRagError``, so
``except TPRagError`` catches them all, while ``except ValueError`` or ``except OSError`` still
catch the ones they always did. The command line prints these as one line (exit status 2).
This module imports nothing, so any layer (and the command line, before any model code) can
use it.

>>> issubclass(ConfigMismatchError, ValueError), issubclass(ConfigMismatchError, TPRagError)
(True, True)
"""

from __future__ import annotations

import contextvars

__all__ = [
    "ConfigMismatchError",
    "DocumentError",
    "ModelUnavailableError",
    "StoreBusyError",
    "StoreUnavailableError",
    "TPRagError",
    "UntrustedConfigError",
]


MODEL_HINT: contextvars.ContextVar[str] = contextvars.ContextVar(
    "tp_rag_model_hint", default="TPEncoder.from_pretrained('{path}')"
)
"""How the code that is loading a model names one (``{path}`` for the folder), for the hint of
a ``ModelUnavailableError`` raised meanwhile; set with ``tp_rag.loading.model_hint``."""


class TPRagError(Exception):
    """Base class of tp-rag's own errors; the message says what is wrong and how to fix it."""


class DocumentError(TPRagError, ValueError):
    """A file that cannot be ingested (unreadable, empty, binary or corrupt); says which and why."""


class ConfigMismatchError(TPRagError, ValueError):
    """A collection holds vectors of another encoder configuration than the one in use."""


class StoreBusyError(TPRagError, OSError):
    """Another process is writing to the same embedded Chroma folder."""


class StoreUnavailableError(TPRagError, ConnectionError):
    """The Chroma server cannot be reached (it is down, or stopped during the work)."""


class UntrustedConfigError(TPRagError, PermissionError):
    """A stored configuration (e.g. a Chroma collection's embedding function) would run a
    model's own code or fetch other files, and the reader did not opt in."""


class ModelUnavailableError(TPRagError, OSError):
    """A model could not be loaded (hub unreachable, unknown name, missing files).

    The message says how to pass a local copy instead. ``hint`` is how the caller names a
    model, with ``{path}`` for the folder: the Python call by default; the command line sets
    its own option (``tp-rag embed --model {path}``, ``make demo MODEL={path}``) on the error
    before printing it.

    >>> error = ModelUnavailableError("org/name", "not found")
    >>> error.hint = "tp-rag embed --model {path}"
    >>> str(error).splitlines()[-1].split("e.g. ")[-1]
    'tp-rag embed --model /models/Qwen2.5-0.5B-Instruct'
    """

    def __init__(self, name_or_path: str, reason: str) -> None:
        super().__init__(name_or_path)  # one argument: two would be OSError's (errno, strerror)
        self.name_or_path = name_or_path
        self.reason = reason
        self.hint = MODEL_HINT.get()

    def __reduce__(self) -> tuple[object, ...]:  # pickled back from a Ray worker, hint included
        return type(self), (self.name_or_path, self.reason), self.__dict__

    def __str__(self) -> str:
        example = self.hint.replace("{path}", "/models/Qwen2.5-0.5B-Instruct")
        return (
            f"could not load model {self.name_or_path!r}: {self.reason}\n"
            "Pass a local directory that holds the model's config.json, tokenizer and weights "
            f"instead, e.g. {example}"
        )
