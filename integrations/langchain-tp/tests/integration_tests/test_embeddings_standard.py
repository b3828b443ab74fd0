"""The langchain-tests standard integration suite for ``TPEmbeddings``."""

from __future__ import annotations

import os
from typing import Any

from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tp import TPEmbeddings


class TestTPEmbeddingsIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[TPEmbeddings]:
        return TPEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model": os.environ["LANGCHAIN_TP_TEST_MODEL"], "device": "cpu"}
