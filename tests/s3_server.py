"""A real S3 server on loopback for the tests: moto in server mode.

s3fs talks HTTP to it exactly as to AWS (moto's in-process mock patches botocore and does
not work with s3fs's async client). The server records every request line, so tests can
assert which requests a step made (e.g. one listing and no per-chunk HEAD on a rerun).
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import threading
import time
import urllib.request
from typing import Iterator

# Fake credentials for the (unauthenticated) server; the tests set them as env vars.
ACCESS_KEY = "AKIATESTDISTETL00000"
SECRET_KEY = "distetl-test-secret-do-not-leak-0123456789"
REGION = "us-east-1"

_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # werkzeug colours the lines of 3xx/4xx/5xx answers
_REQUEST = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3})')


class RequestLog(logging.Handler):
    """Collects the request lines werkzeug logs for the moto server.

    Attributes:
        lines: ``(method, path, status)`` of every request seen, in order.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.lines: list[tuple[str, str, int]] = []
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        match = _REQUEST.search(_ANSI.sub("", record.getMessage()))
        if match:
            with self._guard:
                self.lines.append((match["method"], match["path"], int(match["status"])))

    def mark(self) -> int:
        """The position to read new requests from (see :meth:`since`)."""
        return self._settle()

    def since(self, mark: int) -> list[tuple[str, str, int]]:
        """Requests seen after ``mark``."""
        self._settle()
        with self._guard:
            return list(self.lines[mark:])

    def _settle(self, quiet: float = 0.3, limit: float = 3.0) -> int:
        """werkzeug logs a request after answering it, so the lines of requests a test just
        made may still be on their way: wait until no line arrived for ``quiet`` seconds."""
        deadline = time.monotonic() + limit
        seen = -1
        while time.monotonic() < deadline:
            with self._guard:
                count = len(self.lines)
            if count == seen:
                break
            seen = count
            time.sleep(quiet)
        with self._guard:
            return len(self.lines)


class S3Server:
    """A moto S3 server on 127.0.0.1 with a random port.

    Attributes:
        endpoint: ``http://127.0.0.1:PORT``.
        requests: Every request the server answered (see :class:`RequestLog`).
    """

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.requests = RequestLog()
        self.endpoint = ""
        self._propagate = True

    def start(self) -> "S3Server":
        logger = logging.getLogger("werkzeug")
        logger.addHandler(self.requests)
        logger.setLevel(logging.INFO)
        self._propagate = logger.propagate
        logger.propagate = False  # keep request lines out of pytest's captured output
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        self._server.stop()
        logger = logging.getLogger("werkzeug")
        logger.removeHandler(self.requests)
        logger.propagate = self._propagate

    def client(self, **credentials: str):
        """A boto3 S3 client for this server (test set-up and inspection only)."""
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=REGION,
            aws_access_key_id=credentials.get("key", ACCESS_KEY),
            aws_secret_access_key=credentials.get("secret", SECRET_KEY),
        )

    def create_bucket(self, name: str) -> str:
        """Create a bucket (no location constraint) and return ``s3://name``."""
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def keys(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """Every object under a prefix with its size (straight from the server)."""
        out: dict[str, int] = {}
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for item in page.get("Contents", []):
                out[item["Key"]] = item["Size"]
        return out

    def etags(self, bucket: str, prefix: str = "") -> dict[str, tuple[str, str]]:
        """ETag and last-modified of every object under a prefix (to prove objects untouched)."""
        out = {}
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for item in page.get("Contents", []):
                out[item["Key"]] = (item["ETag"], item["LastModified"].isoformat())
        return out

    def set_authentication(self, enabled: bool) -> None:
        """Turn moto's credential checks on (every request must be signed by an IAM user's
        key) or off (any credentials pass), for the whole server process."""
        body = b"0" if enabled else b"inf"
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset-auth", data=body, method="POST",
                                         headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200

    @contextlib.contextmanager
    def authenticated_user(self) -> Iterator[tuple[str, str]]:
        """An IAM user allowed every S3 action; authentication on while in the block.

        Yields:
            The user's ``(access_key_id, secret_access_key)``.
        """
        import json

        import boto3

        iam = boto3.client(
            "iam", endpoint_url=self.endpoint, region_name=REGION,
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
        )
        name = f"distetl-{len(self.requests.lines)}"
        iam.create_user(UserName=name)
        iam.put_user_policy(
            UserName=name, PolicyName="s3-all",
            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}),
        )
        key = iam.create_access_key(UserName=name)["AccessKey"]
        self.set_authentication(True)
        try:
            yield key["AccessKeyId"], key["SecretAccessKey"]
        finally:
            self.set_authentication(False)


def closed_port() -> int:
    """A loopback port with nothing listening on it (bound, then released)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def isolate_aws_env(monkeypatch, tmp_path) -> None:
    """Standard AWS settings for a test (the server's test credentials and region);
    nothing from the machine's own AWS configuration, endpoint or profile."""
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
