"""``python -m tp_rag`` runs the ``tp-rag`` command line."""

import sys

from tp_rag.cli import main

sys.exit(main())
