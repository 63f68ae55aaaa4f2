"""A loopback S3 for tests: moto's server mode (a real HTTP S3 API) on a free 127.0.0.1 port.

Requests are authenticated (moto's IAM): the server gets a user with an access key allowed
``s3:*`` and one bucket, then every later request must be signed with that key, so a wrong
secret is refused as S3 refuses it (403 ``SignatureDoesNotMatch``). Stopped on exit, also on
failure; moto's no-auth setting is restored.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

REGION = "us-east-1"


@dataclass
class S3:
    endpoint: str
    key: str
    secret: str
    bucket: str

    def options(self, **over: Any) -> dict[str, Any]:
        """s3fs-style storage options for this server (``mlx.yaml`` vocabulary)."""
        return {"endpoint_url": self.endpoint, "key": self.key, "secret": self.secret, **over}

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.key,
            aws_secret_access_key=self.secret,
            region_name=REGION,
        )

    def prefix(self) -> str:
        """A fresh ``s3://bucket/<uuid>`` for one test."""
        return f"s3://{self.bucket}/{uuid.uuid4().hex[:12]}"


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def s3_server() -> Iterator[S3]:
    import boto3
    from moto import settings
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    before = settings.INITIAL_NO_AUTH_ACTION_COUNT
    try:
        endpoint = f"http://127.0.0.1:{port}"
        setup = {
            "endpoint_url": endpoint,
            "aws_access_key_id": "setup",
            "aws_secret_access_key": "setup",
            "region_name": REGION,
        }
        # moto's state is per process, shared by every server started in it: names of our own
        run = uuid.uuid4().hex[:8]
        user, bucket = f"mlx-{run}", f"mlx-lake-{run}"
        iam = boto3.client("iam", **setup)
        iam.create_user(UserName=user)
        key = iam.create_access_key(UserName=user)["AccessKey"]
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(policy))
        boto3.client("s3", **setup).create_bucket(Bucket=bucket)
        settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # from now on every request is checked
        yield S3(
            endpoint=endpoint,
            key=key["AccessKeyId"],
            secret=key["SecretAccessKey"],
            bucket=bucket,
        )
    finally:
        settings.INITIAL_NO_AUTH_ACTION_COUNT = before
        server.stop()
