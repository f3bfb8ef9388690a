"""kvstore: a replicated key-value store on the Multi-Paxos core of ``paxos`` (trio node, storage, client)."""
