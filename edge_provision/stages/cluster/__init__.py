"""Stage cluster: kubeadm, k3s, KubeEdge and OpenYurt (roles kubernetes_node, control_plane_kubeadm,
node_join_kubeadm, k3s_*, kubeedge*, openyurt_join)."""
