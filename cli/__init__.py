"""The `raftxmpp` command line (installed as the `raftxmpp_cli` package)."""
