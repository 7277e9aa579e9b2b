"""Local commits are atomic; storage options parse and never leak credentials."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from distetl.storage import Storage, parse_storage_options, redact


def test_write_atomic_leaves_only_the_final_file(tmp_path):
    storage = Storage.for_url(str(tmp_path))
    target = tmp_path / "a" / "b" / "part-0.parquet"
    assert storage.write_atomic(str(target), b"complete bytes")
    assert target.read_bytes() == b"complete bytes"
    assert sorted(os.listdir(target.parent)) == ["part-0.parquet"]
    storage.write_atomic(str(target), b"second")
    assert target.read_bytes() == b"second"


def test_process_killed_before_commit_leaves_nothing_at_the_target(tmp_path):
    target = tmp_path / "t" / "part-0.parquet"
    script = textwrap.dedent(f"""
        import os, signal
        from distetl.storage import Storage
        real_replace = os.replace
        def die(src, dst):
            assert os.path.getsize(src) > 0  # the bytes are written, not committed
            os.kill(os.getpid(), signal.SIGKILL)
        os.replace = die
        Storage.for_url({str(tmp_path)!r}).write_atomic({str(target)!r}, b"x" * 1_000_000)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9
    assert not target.exists()


def test_parse_storage_options_types_and_nesting():
    opts = parse_storage_options(["anon=false", "client_kwargs.region_name=eu-west-1", "max=3"])
    assert opts == {"anon": False, "client_kwargs": {"region_name": "eu-west-1"}, "max": 3}
    with pytest.raises(Exception, match="KEY=VALUE"):
        parse_storage_options(["novalue"])


def test_redact_hides_credentials():
    opts = {"key": "AKIA123", "secret": "s3cr3t", "endpoint_url": "http://x", "client_kwargs": {"aws_session_token": "t"}}
    shown = redact(opts)
    assert shown["key"] == shown["secret"] == "***"
    assert shown["client_kwargs"]["aws_session_token"] == "***"
    assert shown["endpoint_url"] == "http://x"
    assert "s3cr3t" not in repr(Storage("s3", opts))
