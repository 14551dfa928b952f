"""Client-to-server streams."""
