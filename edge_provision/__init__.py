"""edge-provision: bare edge hosts to Kubernetes nodes that run WebAssembly beside containers."""

from pathlib import Path

__version__ = "0.1.0"

# The checkout (or installed tree) that holds roles/, playbooks/ and inventories/.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
