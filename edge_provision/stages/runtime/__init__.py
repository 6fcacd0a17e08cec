"""Stage runtime: containerd with a Wasm handler on crun (roles containerd, wasm_runtime)."""
