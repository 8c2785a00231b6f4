"""HTTP resources of the serving application, one module per resource family."""
