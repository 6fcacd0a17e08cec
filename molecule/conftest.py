"""Molecule's testinfra verifiers run pytest from a scenario directory: make the repository's
`tests` package importable (the checks the lab tier shares with every scenario, tests/checks,
and what a verifier reads of its scenario, tests/molecule/scenario.py)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
