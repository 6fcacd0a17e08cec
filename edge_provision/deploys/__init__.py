"""pyinfra deploys, one per stage; each reads its Ansible role's defaults and templates."""
