"""kvstore: a Dynamo/Cassandra-style replicated key-value store with a Raft metadata group."""

__version__ = "0.1.0"
