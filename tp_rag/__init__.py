"""tp-rag: Token Prepending (Fu et al., ACL 2025) sentence embeddings for retrieval.

>>> from tp_rag import TPEncoder
>>> enc = TPEncoder.from_pretrained()  # doctest: +SKIP
>>> enc.encode(["A man plays a guitar.", "Is it raining?"]).shape  # doctest: +SKIP
(2, 896)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tp_rag.config import DEFAULT_MODEL, TPConfig
from tp_rag.prompts import BUILTIN_PROMPTS, PLACEHOLDER

if TYPE_CHECKING:
    from tp_rag.encoder import TPEncoder

__all__ = ["BUILTIN_PROMPTS", "DEFAULT_MODEL", "PLACEHOLDER", "TPConfig", "TPEncoder"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # torch and transformers load on first use of the encoder, so `tp-rag --help` stays fast.
    if name == "TPEncoder":
        from tp_rag.encoder import TPEncoder

        return TPEncoder
    raise AttributeError(f"module 'tp_rag' has no attribute {name!r}")
