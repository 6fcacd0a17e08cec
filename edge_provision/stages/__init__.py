"""Logic both engines share, one package per stage. Imports neither pyinfra nor Ansible."""
