"""The `spanrec` and `spanrecctl` command lines."""
import os

# gRPC's C core logs e.g. TLS handshake failures at INFO on stderr, outside our
# log format, and reads this when grpc is first imported: set it before that.
# Our one-line errors already say what failed.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
