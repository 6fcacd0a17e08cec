"""pyinfra deploys, one per stage (deploy.py runs them)."""
