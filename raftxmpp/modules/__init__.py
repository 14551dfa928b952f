"""IM features, one module per RFC section or XEP; each registers handlers with the router."""
