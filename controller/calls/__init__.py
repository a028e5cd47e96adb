"""SIP dialogs, legs and the call table: the call engine. May import ingest (shard ownership) and media (stream state); never output or api."""
