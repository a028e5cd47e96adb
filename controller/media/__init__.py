"""RTP/RTCP streams, codecs, audio timeline and rendering, quality, SRTP, DTMF and hold. Imports nothing of calls, output or api (type hints only)."""
