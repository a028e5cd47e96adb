#!/usr/bin/env bash
# Installs (or upgrades, or removes) the spanrec sensor as a systemd service on a
# Debian/Ubuntu branch box. Idempotent: re-running upgrades in place and keeps
# the config and the spool. See --help and docs/DECISIONS.md "Sensor install".
set -euo pipefail

PROG="install-sensor"
HERE="$(cd "$(dirname "$0")" && pwd)"
CHECKOUT="$(dirname "$HERE")"

usage() {
  cat <<'EOF'
Usage: scripts/install-sensor.sh [OPTIONS]
Installs the spanrec sensor: a virtual environment (/opt/spanrec/venv), the config
/etc/spanrec/sensor.toml, TLS files in /etc/spanrec/tls/ (etcd: /etc/spanrec/etcd/), the spool
/var/lib/spanrec/spool, the system user `spanrec` and the systemd unit
spanrec-sensor.service (started when systemd runs). Re-running upgrades in place:
the config is rewritten only with the settings given (the others are kept).

Sensor settings (written to /etc/spanrec/sensor.toml):
  --interface IFACE        mirror (SPAN) port to capture on (required on first install)
  --controller HOST:PORT   controller to stream to  } one of them is required
  --etcd HOST:PORT[,...]   etcd endpoints to find it } on first install
  --sensor-id ID           unique sensor id (default: this host's name)
  --site NAME              site name shown in status
  --bpf FILTER             BPF filter (default: the sensor's own)
  --tls-cert FILE          PEM certificate of this sensor (CN = sensor id) } copied to
  --tls-key FILE           its private key (installed 0600, owner spanrec)  } /etc/spanrec/tls/
  --tls-ca FILE            CA certificate that signs the controller         }
  --insecure               plain-text gRPC without TLS (labs only)
  --etcd-ca FILE           CA that signs etcd's certificate (TLS to etcd)  } copied to
  --etcd-cert FILE         client certificate for etcd's --client-cert-auth } /etc/spanrec/etcd/
  --etcd-key FILE          its private key (installed 0600, owner spanrec)  }
  --etcd-server-name NAME  name to check in etcd's certificate (default: the --etcd host)
  --etcd-insecure          plain text to an etcd on another host: anyone on the path can
                           read and change the registry and the recording rules (labs only).
                           With --etcd a first install needs --etcd-ca or this (loopback
                           etcd excepted); an etcd password is never sent in plain text

Installation:
  --source PATH            project checkout, wheel or sdist to install
                           (default: the checkout this script is in)
  --python PYTHON          interpreter for the venv (default /usr/bin/python3, >= 3.11)
  --find-links DIR         install offline from a local wheel directory (pip --no-index)
  --deps-from VENV         take the dependencies from an existing environment instead
                           of downloading them: spanrec is installed with --no-deps and a
                           .pth file points at VENV's site-packages (CI, air-gapped boxes)
  --no-apt                 do not install apt packages (libpcap0.8, build tools)
  --no-start               do not enable/start the service
  --destdir DIR            install into a separate root: every path prefixed with DIR,
                           no user creation, no chown, no systemctl; what would be done
                           is written to DIR/opt/spanrec/postinst.sh (the venv under DIR
                           works in place, its scripts name DIR paths)
  --uninstall              stop and remove the service, venv, config and TLS files;
                           keeps /var/lib/spanrec/spool and the user `spanrec`
  --purge                  with --uninstall: also remove the spool and the user
  -h, --help               this help
EOF
}

die() { echo "$PROG: error: $*" >&2; exit 1; }
say() { echo "$PROG: $*" >&2; }

# -- flags --------------------------------------------------------------------
DESTDIR=""
SOURCE="$CHECKOUT"
PYTHON_BIN="python3"
[ -x /usr/bin/python3 ] && PYTHON_BIN="/usr/bin/python3"   # the distribution's, readable by the service user
FIND_LINKS=""
DEPS_FROM=""
DO_APT=1
DO_START=1
UNINSTALL=0
PURGE=0
declare -A SET=()          # config keys given on this run
TLS_CERT="" TLS_KEY="" TLS_CA=""
ETCD_CA="" ETCD_CERT="" ETCD_KEY=""

need() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --interface) need "$@"; SET[interface]="$2"; shift 2 ;;
    --controller) need "$@"; SET[controller]="$2"; shift 2 ;;
    --etcd) need "$@"; SET[etcd]="$2"; shift 2 ;;
    --sensor-id) need "$@"; SET[sensor_id]="$2"; shift 2 ;;
    --site) need "$@"; SET[site]="$2"; shift 2 ;;
    --bpf) need "$@"; SET[bpf]="$2"; shift 2 ;;
    --tls-cert) need "$@"; TLS_CERT="$2"; shift 2 ;;
    --tls-key) need "$@"; TLS_KEY="$2"; shift 2 ;;
    --tls-ca) need "$@"; TLS_CA="$2"; shift 2 ;;
    --insecure) SET[insecure]=true; shift ;;
    --etcd-ca) need "$@"; ETCD_CA="$2"; shift 2 ;;
    --etcd-cert) need "$@"; ETCD_CERT="$2"; shift 2 ;;
    --etcd-key) need "$@"; ETCD_KEY="$2"; shift 2 ;;
    --etcd-server-name) need "$@"; SET[etcd_server_name]="$2"; shift 2 ;;
    --etcd-insecure) SET[etcd_insecure]=true; shift ;;
    --source) need "$@"; SOURCE="$2"; shift 2 ;;
    --python) need "$@"; PYTHON_BIN="$2"; shift 2 ;;
    --find-links) need "$@"; FIND_LINKS="$2"; shift 2 ;;
    --deps-from) need "$@"; DEPS_FROM="$2"; shift 2 ;;
    --no-apt) DO_APT=0; shift ;;
    --no-start) DO_START=0; shift ;;
    --destdir) need "$@"; DESTDIR="$2"; shift 2 ;;
    --uninstall) UNINSTALL=1; shift ;;
    --purge) PURGE=1; shift ;;
    *) die "unknown option: $1 (see --help)" ;;
  esac
done

[ "$PURGE" = 0 ] || [ "$UNINSTALL" = 1 ] || die "--purge only goes with --uninstall"
if [ -n "$DESTDIR" ]; then
  mkdir -p "$DESTDIR" || die "cannot create --destdir $DESTDIR"
  DESTDIR="$(cd "$DESTDIR" && pwd)"
  [ "$DESTDIR" != "/" ] || DESTDIR=""
fi
if [ -z "$DESTDIR" ] && [ "$(id -u)" -ne 0 ]; then
  die "run as root (or with --destdir DIR to install into a separate root)"
fi

# -- paths (final, as seen by the service) ------------------------------------
USER_NAME="spanrec"
PREFIX="/opt/spanrec"
VENV="$PREFIX/venv"
ETC="/etc/spanrec"
CONFIG="$ETC/sensor.toml"
TLSDIR="$ETC/tls"
ETCDDIR="$ETC/etcd"
STATE="/var/lib/spanrec"
SPOOL="$STATE/spool"
UNIT_NAME="spanrec-sensor.service"
UNIT="/etc/systemd/system/$UNIT_NAME"
D="$DESTDIR"               # prefix of every path we touch
POSTINST="$D$PREFIX/postinst.sh"

# systemd is usable: running, not in a chroot, not installing into DESTDIR
systemd_live() {
  [ -z "$DESTDIR" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null &&
    ! { command -v systemd-detect-virt >/dev/null && systemd-detect-virt -q --chroot; }
}

# Runs a privileged host action now, or records it in postinst.sh under --destdir.
host() {
  if [ -n "$DESTDIR" ]; then
    echo "$*" >>"$POSTINST"
  else
    "$@"
  fi
}

# -- uninstall ----------------------------------------------------------------
if [ "$UNINSTALL" = 1 ]; then
  if systemd_live; then
    systemctl disable --now "$UNIT_NAME" >/dev/null 2>&1 || true
  fi
  rm -f "$D$UNIT"
  systemd_live && systemctl daemon-reload || true
  rm -rf "$D$PREFIX" "$D$ETC"
  if [ "$PURGE" = 1 ]; then
    rm -rf "$D$STATE"
    if [ -z "$DESTDIR" ] && id -u "$USER_NAME" >/dev/null 2>&1; then
      userdel "$USER_NAME" >/dev/null 2>&1 || say "warning: could not remove user $USER_NAME"
    fi
    say "removed the sensor, its spool and the user $USER_NAME"
  else
    say "removed the sensor; kept $D$SPOOL (and the user $USER_NAME): --uninstall --purge removes them"
  fi
  exit 0
fi

# -- checks before changing anything ------------------------------------------
FIRST=1
[ -f "$D$CONFIG" ] && FIRST=0
if [ "$FIRST" = 1 ]; then
  [ -n "${SET[interface]:-}" ] || die "first install needs --interface IFACE"
  [ -n "${SET[controller]:-}${SET[etcd]:-}" ] || die "first install needs --controller HOST:PORT or --etcd ENDPOINTS"
  if [ -z "$TLS_CERT$TLS_KEY$TLS_CA" ] && [ -z "${SET[insecure]:-}" ]; then
    die "first install needs --tls-cert, --tls-key and --tls-ca (or --insecure for a lab)"
  fi
fi
if [ -n "$TLS_CERT$TLS_KEY$TLS_CA" ]; then
  [ -n "$TLS_CERT" ] && [ -n "$TLS_KEY" ] && [ -n "$TLS_CA" ] || die "give all of --tls-cert, --tls-key and --tls-ca"
  for f in "$TLS_CERT" "$TLS_KEY" "$TLS_CA"; do [ -r "$f" ] || die "cannot read $f"; done
  [ -z "${SET[insecure]:-}" ] || die "--insecure and --tls-* exclude each other"
fi
if [ -n "$ETCD_CERT$ETCD_KEY" ]; then
  [ -n "$ETCD_CERT" ] && [ -n "$ETCD_KEY" ] || die "give --etcd-cert and --etcd-key together"
  [ -n "$ETCD_CA" ] || die "--etcd-cert needs --etcd-ca (the CA that signs etcd's certificate)"
fi
for f in "$ETCD_CA" "$ETCD_CERT" "$ETCD_KEY"; do [ -z "$f" ] || [ -r "$f" ] || die "cannot read $f"; done
if [ -n "$ETCD_CA" ] && [ -n "${SET[etcd_insecure]:-}" ]; then
  die "--etcd-insecure and --etcd-ca exclude each other"
fi
if [ "$FIRST" = 1 ] && [ -n "${SET[etcd]:-}" ] && [ -z "$ETCD_CA" ] && [ -z "${SET[etcd_insecure]:-}" ]; then
  remote=""
  IFS=',' read -r -a endpoints <<<"${SET[etcd]}"
  for e in "${endpoints[@]}"; do
    e="${e#*://}"; h="${e%:*}"; h="${h#[}"; h="${h%]}"; h="${h// /}"
    case "$h" in localhost|127.*|::1|"") ;; *) remote="$remote${remote:+,}$h" ;; esac
  done
  [ -z "$remote" ] || die "etcd $remote is not on this host: give --etcd-ca (and --etcd-cert/--etcd-key) for TLS, or --etcd-insecure to accept plain text"
fi
if [ -n "${SET[controller]:-}" ]; then
  [[ "${SET[controller]}" =~ ^.+:[0-9]{1,5}$ ]] || die "--controller must be HOST:PORT, got ${SET[controller]}"
fi
if [ -n "${SET[sensor_id]:-}" ]; then
  [[ "${SET[sensor_id]}" =~ ^[A-Za-z0-9_.:-]{1,128}$ ]] || die "--sensor-id may hold only letters, digits, _ . : - (got ${SET[sensor_id]})"
fi
[ -e "$SOURCE" ] || die "--source not found: $SOURCE"
SOURCE="$(cd "$(dirname "$SOURCE")" && pwd)/$(basename "$SOURCE")"
[ -z "$FIND_LINKS" ] || [ -d "$FIND_LINKS" ] || die "--find-links is not a directory: $FIND_LINKS"
if [ -n "$DEPS_FROM" ]; then
  [ -x "$DEPS_FROM/bin/python" ] || die "--deps-from is not a virtual environment: $DEPS_FROM"
  PYTHON_BIN="$DEPS_FROM/bin/python"     # same Python as the environment we borrow from
fi

# -- apt ----------------------------------------------------------------------
if [ "$DO_APT" = 1 ] && [ -z "$DESTDIR" ]; then
  command -v dpkg-query >/dev/null || die "not a Debian/Ubuntu system (no dpkg); use --no-apt"
  # libpcap0.8 at run time (loaded through ctypes: sensor/libpcap.py); the rest
  # builds any dependency that has no wheel for this Python.
  missing=""
  for p in libpcap0.8 libpcap-dev gcc python3-dev python3-venv; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
  done
  if [ -n "$missing" ]; then
    say "apt packages:$missing"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq || die "apt-get update failed"
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null \
      || die "apt-get install failed:$missing"
  fi
elif [ "$DO_APT" = 1 ]; then
  say "--destdir: not installing apt packages (libpcap0.8 is needed on the target)"
fi

# -- user ---------------------------------------------------------------------
mkdir -p "$D$PREFIX"
if [ -n "$DESTDIR" ]; then
  { echo "#!/bin/sh"
    echo "# What install-sensor.sh --destdir did not do; run as root on the target."
    echo "set -e"; } >"$POSTINST"
  chmod 0755 "$POSTINST"
fi
ADDUSER="useradd --system --user-group --home-dir $STATE --no-create-home --shell /usr/sbin/nologin --comment 'spanrec sensor' $USER_NAME"
if [ -n "$DESTDIR" ]; then
  echo "id -u $USER_NAME >/dev/null 2>&1 || $ADDUSER" >>"$POSTINST"
elif ! id -u "$USER_NAME" >/dev/null 2>&1; then
  say "creating the system user $USER_NAME"
  eval "$ADDUSER" || die "useradd $USER_NAME failed"
fi

# -- venv and the package -----------------------------------------------------
PY="$D$VENV/bin/python"
if [ ! -x "$PY" ]; then
  say "creating $D$VENV"
  "$PYTHON_BIN" -m venv "$D$VENV" || die "cannot create the venv with $PYTHON_BIN (apt install python3-venv?)"
fi
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "spanrec needs Python >= 3.11 ($PYTHON_BIN is older; use --python)"
pip_args=(-q --disable-pip-version-check --no-input)
[ -z "$FIND_LINKS" ] || pip_args+=(--no-index --find-links "$FIND_LINKS")
if [ -n "$DEPS_FROM" ]; then
  site="$("$DEPS_FROM/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  own="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "$site" >"$own/spanrec-deps.pth"
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
case "$SOURCE" in
  *.whl) WHEEL="$SOURCE" ;;
  *)
    build_from="$SOURCE"
    if [ -d "$SOURCE" ]; then
      [ -f "$SOURCE/pyproject.toml" ] || die "--source $SOURCE has no pyproject.toml"
      # Build from a clean copy: nothing (build/, egg-info) is written into the checkout.
      mkdir "$WORK/src"
      tar -C "$SOURCE" --exclude=./.git --exclude=./.venv --exclude=./build --exclude='*.egg-info' \
          --exclude=./tests --exclude=./deploy --exclude=./spanrec-spool --exclude=__pycache__ \
          -cf - . | tar -C "$WORK/src" -xf -
      build_from="$WORK/src"
    fi
    build_args=()
    [ -z "$DEPS_FROM" ] || build_args+=(--no-build-isolation)   # setuptools from DEPS_FROM
    say "building spanrec from $SOURCE"
    "$PY" -m pip wheel "${pip_args[@]}" "${build_args[@]}" --no-deps -w "$WORK/dist" "$build_from" \
      >"$WORK/build.log" 2>&1 || { tail -n 20 "$WORK/build.log" >&2; die "building spanrec from $SOURCE failed"; }
    WHEEL="$(ls "$WORK"/dist/spanrec-*.whl)"
    ;;
esac
say "installing $(basename "$WHEEL") into $D$VENV"
if [ -z "$DEPS_FROM" ]; then
  "$PY" -m pip install "${pip_args[@]}" --upgrade "$WHEEL" >"$WORK/pip.log" 2>&1 \
    || { tail -n 20 "$WORK/pip.log" >&2; die "pip install of the dependencies failed"; }
fi
# the same version again (an upgrade from a checkout) still replaces the files
"$PY" -m pip install "${pip_args[@]}" --no-deps --force-reinstall "$WHEEL" >"$WORK/pip.log" 2>&1 \
  || { tail -n 20 "$WORK/pip.log" >&2; die "pip install of $WHEEL failed"; }
"$PY" -c "import grpc, cli.main; from sensor.libpcap import load_libpcap; load_libpcap()" 2>"$WORK/import.log" \
  || { tail -n 5 "$WORK/import.log" >&2; die "the installed sensor does not import (libpcap missing?)"; }

# -- directories, TLS files, config -------------------------------------------
install -d -m 0755 "$D$ETC"
install -d -m 0750 "$D$STATE" "$D$SPOOL"
host chown "$USER_NAME:$USER_NAME" "$STATE" "$SPOOL"
if [ -n "$TLS_CERT" ]; then
  install -d -m 0750 "$D$TLSDIR"
  install -m 0644 "$TLS_CERT" "$D$TLSDIR/sensor.crt"
  install -m 0644 "$TLS_CA" "$D$TLSDIR/ca.crt"
  install -m 0600 "$TLS_KEY" "$D$TLSDIR/sensor.key"
  host chown "root:$USER_NAME" "$TLSDIR"
  host chown "$USER_NAME:$USER_NAME" "$TLSDIR/sensor.key"
  SET[tls_cert]="$TLSDIR/sensor.crt"; SET[tls_key]="$TLSDIR/sensor.key"; SET[tls_ca]="$TLSDIR/ca.crt"
  SET[insecure]=false
elif [ -n "${SET[insecure]:-}" ]; then
  SET[tls_cert]=""; SET[tls_key]=""; SET[tls_ca]=""     # "" = remove the key
fi
# etcd TLS files: like the gRPC ones, in their own folder (another CA, usually)
if [ -n "$ETCD_CA" ]; then
  install -d -m 0750 "$D$ETCDDIR"
  install -m 0644 "$ETCD_CA" "$D$ETCDDIR/ca.crt"
  host chown "root:$USER_NAME" "$ETCDDIR"
  SET[etcd_ca]="$ETCDDIR/ca.crt"
  if [ -n "$ETCD_CERT" ]; then
    install -m 0644 "$ETCD_CERT" "$D$ETCDDIR/client.crt"
    install -m 0600 "$ETCD_KEY" "$D$ETCDDIR/client.key"
    host chown "$USER_NAME:$USER_NAME" "$ETCDDIR/client.key"
    SET[etcd_cert]="$ETCDDIR/client.crt"; SET[etcd_key]="$ETCDDIR/client.key"
  fi
  SET[etcd_insecure]=false
elif [ -n "${SET[etcd_insecure]:-}" ]; then
  SET[etcd_ca]=""; SET[etcd_cert]=""; SET[etcd_key]=""  # plain text: no TLS files kept
  rm -f "$D$ETCDDIR/ca.crt" "$D$ETCDDIR/client.crt" "$D$ETCDDIR/client.key"
  [ ! -d "$D$ETCDDIR" ] || rmdir "$D$ETCDDIR" 2>/dev/null || true
fi
if [ "$FIRST" = 1 ]; then
  [ -n "${SET[sensor_id]:-}" ] || SET[sensor_id]="$(hostname -s 2>/dev/null || hostname)"
  [[ "${SET[sensor_id]}" =~ ^[A-Za-z0-9_.:-]{1,128}$ ]] || die "host name ${SET[sensor_id]} is no valid sensor id: give --sensor-id"
  SET[spool_dir]="$SPOOL"
  [ -n "${SET[controller]:-}" ] || SET[controller]=""
fi
if [ "${#SET[@]}" -gt 0 ]; then
  # merge: keys given now replace those in the file, the rest are kept; "" removes one.
  args=()
  for k in "${!SET[@]}"; do args+=("$k=${SET[$k]}"); done
  "$PY" - "$D$CONFIG" "${args[@]}" <<'PYEOF' || die "cannot write the config $D$CONFIG"
import json, os, sys, tomllib
path, pairs = sys.argv[1], sys.argv[2:]
values = {}
if os.path.exists(path):
    with open(path, "rb") as f:
        data = tomllib.load(f)
    values = dict(data.get("sensor", data))
for pair in pairs:
    key, _, value = pair.partition("=")
    if key in ("insecure", "etcd_insecure"):
        values[key] = value == "true"
    elif value == "":
        values.pop(key, None)
    else:
        values[key] = value
order = ["sensor_id", "site", "interface", "bpf", "controller", "etcd", "etcd_ca", "etcd_cert",
         "etcd_key", "etcd_server_name", "etcd_insecure", "tls_cert", "tls_key", "tls_ca", "insecure",
         "spool_dir"]
keys = [k for k in order if k in values] + sorted(k for k in values if k not in order)
lines = ["# spanrec sensor: written by scripts/install-sensor.sh; re-running it with flags",
         "# changes only the settings given. Flags and SPANREC_* variables beat this file.",
         "[sensor]"]
for k in keys:
    v = values[k]
    lines.append(f"{k} = {json.dumps(v) if not isinstance(v, bool) else str(v).lower()}")
tmp = path + ".tmp"
with open(tmp, "w") as f:
    f.write("\n".join(lines) + "\n")
os.chmod(tmp, 0o640)
os.replace(tmp, path)
PYEOF
  say "wrote $D$CONFIG"
else
  say "kept $D$CONFIG"
fi
chmod 0640 "$D$CONFIG"
host chown "root:$USER_NAME" "$CONFIG"
# the config must load as the service will read it, and pass the etcd rules
# (TLS files read from under --destdir)
"$PY" -c "
import sys
from pathlib import Path
from cli.settings import ConfigError, SensorSettings, load
try:
    s = load(SensorSettings, 'sensor', sys.argv[1], {})
    if s.etcd:
        moved = {k: Path(sys.argv[2] + str(getattr(s, k))) for k in ('etcd_ca', 'etcd_cert', 'etcd_key')
                 if getattr(s, k) is not None}
        s.model_copy(update=moved).etcd_security()
except ConfigError as exc:
    sys.exit(str(exc))" "$D$CONFIG" "$D" 2>"$WORK/check.log" \
  || { tail -n 1 "$WORK/check.log" >&2; die "the config $D$CONFIG does not load"; }

# the service user can run it (an interpreter under /root, say, would not do)
if [ -z "$DESTDIR" ] && command -v runuser >/dev/null; then
  (cd / && runuser -u "$USER_NAME" -- "$PY" -c "import cli.main; from sensor.libpcap import load_libpcap; load_libpcap()") 2>"$WORK/user.log" \
    || { tail -n 1 "$WORK/user.log" >&2; die "user $USER_NAME cannot run $PY (use --python with a system interpreter)"; }
fi

# -- systemd unit -------------------------------------------------------------
mkdir -p "$D$(dirname "$UNIT")"
cat >"$WORK/unit" <<EOF
# Written by spanrec scripts/install-sensor.sh; re-running it rewrites this file.
[Unit]
Description=spanrec sensor: capture SIP/RTP on a mirror port, stream it to the controller
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User=$USER_NAME
Group=$USER_NAME
ExecStart=$VENV/bin/spanrec sensor --config $CONFIG
WorkingDirectory=$STATE
Environment=PYTHONUNBUFFERED=1
# capture needs raw sockets (and promiscuous mode), nothing else of root's
AmbientCapabilities=CAP_NET_RAW CAP_NET_ADMIN
CapabilityBoundingSet=CAP_NET_RAW CAP_NET_ADMIN
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ReadWritePaths=$STATE
Restart=on-failure
RestartSec=5
# exit 2 = bad flags or config: restarting does not help
RestartPreventExitStatus=2
StandardOutput=journal
StandardError=journal

[Install]
WantedBy=multi-user.target
EOF
install -m 0644 "$WORK/unit" "$D$UNIT"

if [ -n "$DESTDIR" ]; then
  if [ "$DO_START" = 1 ]; then
    host systemctl daemon-reload
    host systemctl enable "$UNIT_NAME"
    host systemctl restart "$UNIT_NAME"
  fi
  say "installed into $DESTDIR; still to do on the target: $POSTINST"
elif systemd_live; then
  systemctl daemon-reload
  if [ "$DO_START" = 1 ]; then
    systemctl enable "$UNIT_NAME" >/dev/null 2>&1 || die "systemctl enable $UNIT_NAME failed"
    systemctl restart "$UNIT_NAME" || die "systemctl restart $UNIT_NAME failed (journalctl -u $UNIT_NAME)"
    say "installed and started $UNIT_NAME (journalctl -u $UNIT_NAME)"
  else
    say "installed $UNIT_NAME (not started: --no-start)"
  fi
else
  say "installed $UNIT_NAME; systemd is not running here, start it with: systemctl enable --now $UNIT_NAME"
fi
