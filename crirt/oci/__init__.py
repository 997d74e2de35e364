"""OCI runtime spec generation: pure functions from crirt's decisions to ``config.json`` documents."""
