"""Server-to-server federation (RFC 6120 s2s streams, XEP-0220 dialback, XEP-0178)."""
