"""S3 errors told apart by their text (``mlx_plugins.kernel.object_store``): an endpoint nobody
answers is never "refused access" (whatever exception wraps it, whatever digits its port, bucket
or request id hold), and each refusal keeps its own sentence."""

from __future__ import annotations

import pytest

from mlx_plugins.kernel.object_store import describe_s3_error, describe_s3_unreachable

URL = "s3://mlx-lake-a403b/events"


@pytest.mark.parametrize("port", [40312, 14030, 34035, 9000])
@pytest.mark.parametrize("wrapper", [OSError, PermissionError, ConnectionError])
def test_an_unreachable_endpoint_is_never_refused_access(port, wrapper):
    exc = wrapper(
        f'Could not connect to the endpoint URL: "http://127.0.0.1:{port}/mlx-lake-a403b"'
    )
    assert describe_s3_error(exc, URL) is None
    said = describe_s3_unreachable(exc, URL)
    assert said is not None and "cannot reach the S3 endpoint for bucket 'mlx-lake-a403b'" in said
    assert "endpoint_url" in said


def test_digits_403_in_a_name_or_id_are_not_a_refusal():
    exc = OSError("An error occurred (InternalError) when calling GetObject: request id 1403ABC")
    assert describe_s3_error(exc, URL) is None


@pytest.mark.parametrize(
    ("message", "says"),
    [
        (
            "An error occurred (403) when calling the HeadObject operation: Forbidden",
            "refused access",
        ),
        ("An error occurred (AccessDenied) when calling the PutObject operation", "refused access"),
        (
            "An error occurred (InvalidAccessKeyId) when calling ListObjectsV2",
            "refused the credentials",
        ),
        ("An error occurred (NoSuchBucket) when calling ListObjectsV2", "does not exist"),
    ],
)
def test_each_refusal_keeps_its_sentence(message, says):
    said = describe_s3_error(OSError(message), URL)
    assert said is not None and says in said and "'mlx-lake-a403b'" in said
    assert describe_s3_error(PermissionError("Access Denied"), URL) is not None  # by type


def test_a_wrapped_refusal_that_also_mentions_a_connection_is_still_a_refusal():
    exc = PermissionError("InvalidAccessKeyId after retry; Connection refused earlier")
    said = describe_s3_error(exc, URL)
    assert said is not None and "refused the credentials" in said
