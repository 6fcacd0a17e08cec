"""Take edge nodes out of a kubeadm cluster with pyinfra (playbooks/remove-node.yml's twin):

    pyinfra inventories/<fleet>/inventory.py remove_node.py --data edge_remove_nodes=lab-3[,lab-4]

Each named node is drained through the Eviction API, its Node deleted and the host reset; the
other members' /etc/hosts drop it. Delete it from hosts.yml afterwards; a host put back joins
again with deploy.py.
"""

from edge_provision.pyinfra_engine.deploys.node_removal import remove_nodes

remove_nodes()
