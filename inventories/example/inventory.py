"""pyinfra inventory for this fleet: reads hosts.yml beside it (one source for both engines)."""

from edge_provision.inventory import pyinfra_groups

control_plane, edge = pyinfra_groups(__file__)
