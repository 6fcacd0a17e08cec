"""Checks shared by the lab tier (tests/lab) and the Molecule verifiers (molecule/*/tests).

Plain functions that take what they check (a testinfra host, a cluster's admin kubeconfig,
node names, role values) and assert: no fixture, no lab, no test module behind them. A lab test
calls them on the hosts it converged; a Molecule verifier on the scenario's hosts.

- host_prep: kernel modules, sysctls, the /etc/hosts block, swap (one host each)
- runtime: containerd with its CRI plugin, crun with the Wasm engine, the images, the Wasm
  image through crun and plain runc (one host each)
- cluster: the control plane, the nodes, the admin kubeconfig, the probe thresholds, the
  workloads (through a cluster's admin kubeconfig)
"""

import pkgutil

import pytest

# pytest rewrites the asserts of test modules and conftest files only: the checks' asserts report
# their operands too, registered here before any check module is imported.
pytest.register_assert_rewrite(*(f"{__name__}.{module.name}" for module in pkgutil.iter_modules(__path__)))
