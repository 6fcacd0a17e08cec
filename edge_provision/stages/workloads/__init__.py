"""Stage workloads: node labels and taints, the RuntimeClass and the sample workloads (role workloads)."""
