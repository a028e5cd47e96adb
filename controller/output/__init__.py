"""A finished call becomes a recording: call.json, audio, call.pcap; telemetry of that path. May import calls and media; never api."""
