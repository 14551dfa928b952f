"""XML streams: framing, stanza helpers and protocol errors. Sans-IO: no sockets here."""
