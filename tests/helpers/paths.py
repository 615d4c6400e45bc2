"""Where the repository's test inputs are, wherever the checkout is."""

from __future__ import annotations

import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: The vector files ship with the package (imagevol.testing.vectors runs them by default).
VECTORS = os.path.join(REPO, "src", "imagevol", "testing", "data")
EXAMPLES = os.path.join(REPO, "examples")
