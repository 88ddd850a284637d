"""How vodflow runs: the CLI, Prefect deployments, and the whole stack on one machine."""
