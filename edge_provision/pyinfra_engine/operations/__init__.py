"""pyinfra operations, by stage."""
