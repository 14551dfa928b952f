"""raftxmpp's fault-injection suite: real node processes in network namespaces, a
recorded XMPP workload, seeded fault episodes, and checkers. Run `python -m chaos run`."""
