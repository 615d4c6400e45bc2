"""Where the repository's test inputs are, wherever the checkout is."""

from __future__ import annotations

import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VECTORS = os.path.join(REPO, "tests", "vectors")
EXAMPLES = os.path.join(REPO, "examples")
