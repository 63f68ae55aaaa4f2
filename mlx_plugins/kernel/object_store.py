"""Storage options for object-store URLs (``s3://...``), shared by the ``files`` data source and
the polars IO manager.

One vocabulary in ``mlx.yaml``: fsspec's / s3fs's (``endpoint_url``, ``key``, ``secret``,
``token``, ``region``, ``client_kwargs``, ``default_block_size``...). fsspec takes it as is;
:func:`polars_options` translates it for polars' native object-store reader (``aws_*`` keys).
A value may be ``{env: NAME}`` (or a Dagster ``EnvVar``): it is read from the environment when
used and registered as a secret (never in logs or errors).

:func:`describe_s3_error` turns the errors S3 gives for wrong credentials, a missing bucket or a
refused permission into one sentence naming the bucket and the fix;
:func:`describe_s3_unreachable` does the same for an endpoint that does not answer.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from mlx_plugins.kernel.secrets import register_secret

_S3_PROTOCOLS = ("s3", "s3a")

_POLARS_KEYS = {
    "key": "aws_access_key_id",
    "secret": "aws_secret_access_key",
    "token": "aws_session_token",
    "endpoint_url": "aws_endpoint_url",
    "region": "aws_region",
    "region_name": "aws_region",
}
"""s3fs option -> polars (object_store) option."""


def is_s3(url: str) -> bool:
    """Whether ``url`` is an ``s3://`` (or ``s3a://``) URL."""
    return urlparse(url).scheme in _S3_PROTOCOLS


def bucket_of(url: str) -> str:
    """The bucket of ``s3://bucket/key``; ``""`` for other URLs."""
    parsed = urlparse(url)
    return parsed.netloc if parsed.scheme in _S3_PROTOCOLS else ""


def resolve(options: Mapping[str, Any], where: str = "storage_options") -> dict[str, Any]:
    """``options`` with every ``{env: NAME}`` / ``EnvVar`` value (at any depth) read from the
    environment and registered as secret.

    Raises
    ------
    RuntimeError
        A variable is not set; names it, ``where`` and the fix.
    """
    return {k: _resolve_value(v, f"{where}.{k}") for k, v in options.items()}


def _resolve_value(value: Any, where: str) -> Any:
    name: str | None = None
    if isinstance(value, Mapping) and set(value) == {"env"}:
        name = str(value["env"])
    elif hasattr(value, "env_var_name"):
        name = str(value.env_var_name)
    if name is not None:
        text = os.environ.get(name)
        if text is None:
            raise RuntimeError(
                f"{where} reads environment variable {name}, which is not set; export "
                f"{name}=... (or set it in the deployment's secrets)"
            )
        register_secret(text)
        return text
    if isinstance(value, Mapping):
        return {k: _resolve_value(v, f"{where}.{k}") for k, v in value.items()}
    return value


def polars_options(options: Mapping[str, Any]) -> dict[str, str] | None:
    """fsspec/s3fs-style ``options`` (resolved) as polars ``storage_options``; None if empty.

    ``key``/``secret``/``token`` -> ``aws_access_key_id``/``aws_secret_access_key``/
    ``aws_session_token``; ``endpoint_url`` (also inside ``client_kwargs``) ->
    ``aws_endpoint_url`` plus ``aws_allow_http`` for an ``http://`` endpoint; ``region``
    (or ``client_kwargs.region_name``) -> ``aws_region``; ``anon: true`` ->
    ``aws_skip_signature``. ``aws_*`` keys pass unchanged; s3fs-only tuning keys
    (``default_block_size``, ``config_kwargs``...) are left out.
    """
    flat: dict[str, Any] = dict(options)
    client = flat.pop("client_kwargs", None)
    if isinstance(client, Mapping):
        for k in ("endpoint_url", "region_name"):
            if k in client and k not in flat:
                flat[k] = client[k]
    out: dict[str, str] = {}
    for k, v in flat.items():
        if v is None:
            continue
        if k in _POLARS_KEYS:
            out[_POLARS_KEYS[k]] = str(v)
        elif k.startswith("aws_"):
            out[k] = str(v)
        elif k == "anon" and v:
            out["aws_skip_signature"] = "true"
    endpoint = out.get("aws_endpoint_url", "")
    if endpoint.startswith("http://"):
        out.setdefault("aws_allow_http", "true")
    if endpoint and "aws_region" not in out:
        out["aws_region"] = "us-east-1"  # S3-compatible stores ignore it; object_store needs one
    return out or None


_CREDENTIAL_CODES = re.compile(
    r"InvalidAccessKeyId|SignatureDoesNotMatch|ExpiredToken|InvalidToken|"
    r"signature we calculated does not match|Access Key Id you provided does not exist|"
    r"Unable to locate credentials|NoCredentialsError|security token",
    re.IGNORECASE,
)
_NO_BUCKET = re.compile(r"NoSuchBucket|bucket does not exist", re.IGNORECASE)
_DENIED = re.compile(
    r"AccessDenied|Forbidden|lacked the necessary privileges|"
    r"\(403\)|\bHTTP 403\b|status code 403\b",
    re.IGNORECASE,
)
"""A refused permission. The status code only in the forms S3 clients print it ("An error
occurred (403) when calling ...", "HTTP 403", "status code 403"): a bare ``403`` also matches a
port (``127.0.0.1:40312``), a bucket name or a request id."""


_UNREACHABLE = re.compile(
    r"EndpointConnectionError|Could not connect to the endpoint|ConnectTimeoutError|"
    r"Connect timeout on endpoint|Cannot connect to host|error sending request|"
    r"Connection refused|Name or service not known|nodename nor servname",
    re.IGNORECASE,
)


def _chain_text(exc: BaseException) -> str:
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 8:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    return " ".join(f"{type(e).__name__}: {e}" for e in chain)


def describe_s3_unreachable(exc: BaseException, url: str) -> str | None:
    """One sentence for an S3 endpoint that did not answer (refused, unresolvable, timed out),
    naming the bucket and the fix; None for any other error (or a non-S3 URL). Not part of
    :func:`describe_s3_error`: a connection failure may pass, so callers keep it retryable."""
    if not is_s3(url):
        return None
    text = _chain_text(exc)
    if not _UNREACHABLE.search(text):
        return None
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"cannot reach the S3 endpoint for bucket '{bucket_of(url)}' ({first[:200]}). Fix: "
        "check storage_options endpoint_url (scheme, host and port) and region, and that this "
        "machine can reach it (proxy, firewall)"
    )


def describe_s3_error(exc: BaseException, url: str) -> str | None:
    """One sentence for an S3 error about credentials, a missing bucket or a refused
    permission, naming the bucket and the fix; None for any other error (or a non-S3 URL)."""
    if not is_s3(url):
        return None
    bucket = bucket_of(url)
    text = _chain_text(exc)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if _UNREACHABLE.search(text) and not (
        _CREDENTIAL_CODES.search(text) or _NO_BUCKET.search(text)
    ):
        return None  # nobody answered: describe_s3_unreachable's case, even if wrapped in a
        # PermissionError (s3fs may translate a failed call into one)
    if _CREDENTIAL_CODES.search(text):
        return (
            f"S3 refused the credentials for bucket '{bucket}' ({first[:200]}). Fix: set "
            "storage_options key and secret (e.g. {env: AWS_ACCESS_KEY_ID} and {env: "
            "AWS_SECRET_ACCESS_KEY}) or the AWS_* environment variables to a valid key pair, "
            "and check endpoint_url"
        )
    if _NO_BUCKET.search(text):
        return (
            f"S3 bucket '{bucket}' does not exist ({first[:200]}). Fix: create the bucket, or "
            "correct the bucket in the URL (and endpoint_url for an S3-compatible store)"
        )
    if isinstance(exc, PermissionError) or _DENIED.search(text):
        return (
            f"S3 refused access to bucket '{bucket}' ({first[:200]}): the credentials are wrong "
            "or may not use the bucket. Fix: check storage_options key and secret (or the AWS_* "
            "environment variables) and endpoint_url, and grant them s3:GetObject, s3:PutObject, "
            "s3:DeleteObject, s3:ListBucket and s3:AbortMultipartUpload on the bucket"
        )
    return None


__all__ = [
    "bucket_of",
    "describe_s3_error",
    "describe_s3_unreachable",
    "is_s3",
    "polars_options",
    "resolve",
]
