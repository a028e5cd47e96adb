"""The same recording written to a real S3 server equals the folder one."""
from __future__ import annotations

from pathlib import Path

from minio import Minio

from tests.conftest import capture
from tests.e2e.conftest import spanrec_record
from tests.storage.conftest import s3_server  # noqa: F401 - session fixture: a real SeaweedFS


def test_s3_recording_equals_folder_recording(tmp_path: Path, s3_server) -> None:  # noqa: F811
    src = capture("MagicJack-_short_call.pcap")
    folder = spanrec_record([src], tmp_path / "rec")
    env = {"SPANREC_S3_ENDPOINT": f"http://{s3_server.endpoint}",
           "SPANREC_S3_ACCESS_KEY": s3_server.access_key,
           "SPANREC_S3_SECRET_KEY": s3_server.secret_key}
    s3 = spanrec_record([src], tmp_path / "unused", "--storage", "s3://calls/site-a", env=env)
    assert folder.returncode == 0 and s3.returncode == 0, s3.stderr
    assert s3_server.secret_key not in s3.stderr + s3.stdout
    client = Minio(s3_server.endpoint, access_key=s3_server.access_key,
                   secret_key=s3_server.secret_key, secure=False)
    objects = {o.object_name: o for o in client.list_objects("calls", prefix="site-a/", recursive=True)}
    # the recordings; not record's call index beside them (index.sqlite*, .index.sqlite.lock)
    local = {str(p.relative_to(folder.out)): p for p in folder.out.rglob("*")
             if p.is_file() and p.parent != folder.out}
    assert sorted(k.removeprefix("site-a/") for k in objects) == sorted(local)
    for rel, path in local.items():
        resp = client.get_object("calls", f"site-a/{rel}")
        try:
            assert resp.read() == path.read_bytes(), rel
        finally:
            resp.close()
            resp.release_conn()


def test_dead_s3_at_start_is_one_clear_line(tmp_path: Path) -> None:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"SPANREC_S3_ENDPOINT": f"http://127.0.0.1:{port}", "SPANREC_S3_ACCESS_KEY": "k",
           "SPANREC_S3_SECRET_KEY": "supersecretvalue"}
    run = spanrec_record([capture("MagicJack-_short_call.pcap")], tmp_path / "x",
                         "--storage", "s3://calls/p", env=env, timeout=120)
    assert run.returncode == 1
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("spanrec: error:")]
    assert len(errors) == 1 and "s3://calls/p" in errors[0], run.stderr
    assert "supersecretvalue" not in run.stderr and "Traceback" not in run.stderr
