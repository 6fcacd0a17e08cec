# The two commands of the README, and the pieces they are made of.
.PHONY: setup demo test unit lab-tests lint clean-lab

HOSTS ?= 3

setup:
	@scripts/setup.sh

# Lab up, every stage provisioned on the lab fleet (host_prep, runtime, cluster, workloads), then
# the lab hosts and the cluster's nodes with their workloads.
demo: setup
	.venv/bin/edge-provision lab up --hosts $(HOSTS)
	.venv/bin/ansible-playbook -i inventories/lab playbooks/site.yml
	.venv/bin/edge-provision lab status
	.venv/bin/edge-provision status -i inventories/lab

# Every tier, fastest first, one pytest summary: unit (seconds), lab (real hosts over SSH),
# VM (the lab's QEMU backend, amd64 + arm64), Molecule (`molecule test` of scenarios containers
# and default; EDGE_MOLECULE_SCENARIOS=containers,default,cluster adds the VM cluster).
# The 20 slowest tests' times come before the summary: CI has 90 minutes.
test: setup
	.venv/bin/pytest --durations=20 tests/unit tests/lab tests/vm tests/molecule

unit: setup
	.venv/bin/pytest tests/unit

lab-tests: setup
	.venv/bin/pytest tests/lab

lint: setup
	.venv/bin/ruff check .
	.venv/bin/mypy
	.venv/bin/yamllint .
	.venv/bin/ansible-lint

clean-lab:
	.venv/bin/edge-provision lab down

.PHONY: vm-tests molecule molecule-cluster

# VM tier alone: the lab's VM backend on real QEMU, amd64 + arm64.
vm-tests: setup
	.venv/bin/pytest tests/vm

# A Molecule scenario (create, converge, idempotence, verify, destroy): SCENARIO=default (host_prep,
# runtime on an amd64 and an arm64 VM), SCENARIO=cluster (every stage on those VMs: kubeadm control
# plane on amd64, the arm64 node joins and runs the Wasm sample) or SCENARIO=containers (every stage
# on two container hosts, minutes, for iterating on roles). EDGE_MOLECULE_STAGES limits the
# stages converged and verified. MOLECULE_ARGS go to `molecule test`, e.g. --destroy=never keeps a
# failed run's VMs (and their logs) for a look inside; `molecule destroy -s <scenario>` (or the
# next run without it) removes them. --destroy=never also skips the
# first destroy, so such a run converges the VMs a kept run left, not new ones: destroy them first.
SCENARIO ?= default
MOLECULE_ARGS ?=

molecule: setup
	PATH="$(CURDIR)/.venv/bin:$$PATH" .venv/bin/molecule test -s $(SCENARIO) \
		$(MOLECULE_ARGS)

molecule-cluster:
	$(MAKE) molecule SCENARIO=cluster
