"""Cluster: the replicated state machine, the Raft bridge, the durable store."""
