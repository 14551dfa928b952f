"""The admin API: a Unix socket in the data dir, owner-only, that the CLI talks to."""
