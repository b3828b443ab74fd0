"""tp-rag: Token Prepending (Fu et al., ACL 2025) sentence embeddings for retrieval.

>>> from tp_rag import TPEncoder
>>> enc = TPEncoder.from_pretrained()  # doctest: +SKIP
>>> enc.encode(["A man plays a guitar.", "Is it raining?"]).shape  # doctest: +SKIP
(2, 896)
"""

from __future__ import annotations

from tp_rag.config import TPConfig
from tp_rag.encoder import TPEncoder
from tp_rag.loading import DEFAULT_MODEL
from tp_rag.prompts import BUILTIN_PROMPTS, PLACEHOLDER

__all__ = ["BUILTIN_PROMPTS", "DEFAULT_MODEL", "PLACEHOLDER", "TPConfig", "TPEncoder"]
__version__ = "0.1.0"
