"""raftxmpp: a multi-master clustered XMPP server.

Durable data lives in a Raft-replicated state machine every node holds and serves;
presence and sessions are gossiped; stanzas travel node to node over authenticated links.
"""

__version__ = "0.1.0"
