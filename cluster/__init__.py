"""Ray clusters: the embedded local runtime (the default) and joining a running cluster."""
