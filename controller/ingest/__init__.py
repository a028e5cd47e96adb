"""Sensor streams in: per-sensor time, clock sanitizer, ordering, dedup, write-ahead log, site ranges, shard ownership. Transport-free; imports nothing of calls, media, output or api."""
