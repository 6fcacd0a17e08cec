"""pyinfra facts, by stage."""
