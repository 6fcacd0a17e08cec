"""Molecule's testinfra verifiers run pytest from a scenario directory: make the repository's
`tests` package (the lab tier's checks, reused by every scenario) importable."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
