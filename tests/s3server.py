"""A real S3-compatible server for the test session: moto's threaded server, bound to
127.0.0.1 on a free port, with IAM authentication on (so wrong credentials are refused as a
real store refuses them) and one bucket. Each test gets its own prefix in that bucket.

``S3Server.env()`` gives the VEIL_ settings a subprocess (a crash script, the CLI) needs to
reach the same store.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from bot.core.blobs import S3Settings
from tests.loopback import free_port

BUCKET = "veil-test"
REGION = "us-east-1"
_POLICY = {"Version": "2012-10-17",
           "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key_id: str
    secret_access_key: str

    def settings(self, **changes: str) -> S3Settings:
        fields = {"endpoint_url": self.endpoint, "access_key_id": self.access_key_id,
                  "secret_access_key": self.secret_access_key, "region": REGION, **changes}
        return S3Settings(**fields)

    def new_url(self) -> str:
        """A fresh, empty place in the bucket."""
        return f"s3://{BUCKET}/t{secrets.token_hex(6)}"

    def env(self, url: str) -> dict[str, str]:
        return {"VEIL_BLOB_URL": url, "VEIL_S3_ENDPOINT_URL": self.endpoint,
                "VEIL_S3_ACCESS_KEY_ID": self.access_key_id,
                "VEIL_S3_SECRET_ACCESS_KEY": self.secret_access_key, "VEIL_S3_REGION": REGION}


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    import boto3
    from moto import settings as moto_settings
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        # Set up as the unauthenticated root, then require valid keys for everything after.
        admin = {"endpoint_url": endpoint, "region_name": REGION,
                 "aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
        iam = boto3.client("iam", **admin)
        iam.create_user(UserName="veil")
        iam.put_user_policy(UserName="veil", PolicyName="s3", PolicyDocument=json.dumps(_POLICY))
        key = iam.create_access_key(UserName="veil")["AccessKey"]
        boto3.client("s3", **admin).create_bucket(Bucket=BUCKET)
        moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # type: ignore[assignment]
        ActionAuthenticatorMixin.request_count = 0
        yield S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        server.stop()
