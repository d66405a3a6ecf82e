"""S3 clients and pyarrow filesystems from the standard AWS credential chain, and one-line storage errors."""

from __future__ import annotations

import os

import boto3
import botocore.exceptions as boto_errors
import botocore.session
import pyarrow.fs as pafs
from botocore import UNSIGNED
from botocore.config import Config
from botocore.credentials import RefreshableCredentials

from batch_parse.storage.location import Location

# Adaptive mode retries throttling (SlowDown, 503) and 5xx with backoff and also slows the
# client's own request rate, which is what a fleet of workers hammering one prefix needs.
MAX_ATTEMPTS = 10
# Above the fetch thread pool's default (16), so its threads never wait for a pooled connection.
MAX_POOL_CONNECTIONS = 32

_UNREACHABLE = (boto_errors.EndpointConnectionError, boto_errors.ConnectTimeoutError, boto_errors.ProxyConnectionError)
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")


class StorageError(Exception):
    """A storage problem the user can fix (missing bucket, credentials, unreachable endpoint); str() is one line."""


def s3_client(location: Location, max_attempts: int = MAX_ATTEMPTS, raw_timestamps: bool = False, **config):
    """A boto3 S3 client for `location`'s store: its endpoint and credentials, adaptive retries.

    raw_timestamps: leave timestamps (LastModified) as the server's text. Parsing them into
    datetimes was ~70% of a listing's client CPU here; listings never use them.
    `config`: further botocore Config settings (e.g. connect_timeout, read_timeout).
    """
    retries = {"mode": "adaptive", "max_attempts": max_attempts}
    return _client(location, Config(retries=retries, max_pool_connections=MAX_POOL_CONNECTIONS, **config), raw_timestamps)


def check_access(location: Location) -> None:
    """Raise StorageError (one line) unless `location` can be listed; answers in seconds.

    The job's clients retry for minutes on a refused connection (right for a flaky network, wrong
    for a mistyped endpoint), so the CLI checks each location once with a short-fused client.
    """
    if not location.is_s3:
        return
    retries = {"mode": "standard", "max_attempts": 2}
    client = _client(location, Config(retries=retries, connect_timeout=5, read_timeout=15))
    try:
        client.list_objects_v2(Bucket=location.bucket, Prefix=location.list_prefix, MaxKeys=1)
    except (boto_errors.BotoCoreError, boto_errors.ClientError) as exc:
        raise StorageError(describe_error(exc, location)) from None


def abort_unfinished_uploads(location: Location) -> int:
    """Abort the multipart uploads under `location` (S3); how many there were.

    A writer killed mid-upload (a manifest, a data file) leaves its parts stored, invisible and
    billed, until someone aborts the upload. Call this only while holding the output's lease:
    no upload of a live run can be under it then.
    """
    client = s3_client(location)
    aborted = 0
    try:
        for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=location.bucket, Prefix=location.list_prefix):
            for upload in page.get("Uploads", ()):
                client.abort_multipart_upload(Bucket=location.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                aborted += 1
    except boto_errors.ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code", "")) in ("NoSuchUpload", "NotImplemented", "501"):
            return aborted  # gone meanwhile, or a store that cannot list uploads
        raise StorageError(describe_error(exc, location)) from None
    except boto_errors.BotoCoreError as exc:
        raise StorageError(describe_error(exc, location)) from None
    return aborted


def _client(location: Location, config: Config, raw_timestamps: bool = False):
    # Path-style because S3-compatible stores (MinIO, SeaweedFS, on-prem) rarely have wildcard DNS
    # for virtual-hosted buckets; AWS itself keeps botocore's default.
    if location.endpoint_url:
        config = config.merge(Config(s3={"addressing_style": "path"}))
    if location.anonymous:
        # Public buckets: unsigned requests, so no credential lookup (and none sent) at all.
        config = config.merge(Config(signature_version=UNSIGNED))
    core = botocore.session.Session(profile=location.profile) if location.profile else botocore.session.get_session()
    if raw_timestamps:
        core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=str)
    return boto3.session.Session(botocore_session=core).client("s3", endpoint_url=location.endpoint_url, config=config)


def pyarrow_filesystem(location: Location) -> pafs.FileSystem:
    """The pyarrow filesystem that reads and writes `location` (paths from `Location.fs_path`)."""
    if not location.is_s3:
        return pafs.LocalFileSystem()
    session = boto3.session.Session(profile_name=location.profile) if location.profile else boto3.session.Session()
    kwargs: dict = {"retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=MAX_ATTEMPTS)}
    endpoint_url = location.endpoint_url
    if endpoint_url:
        scheme, _, host = endpoint_url.partition("://")
        if not host:
            raise StorageError(f"endpoint URL must start with http:// or https://, got {endpoint_url}")
        # Explicit endpoint and region: FileSystem.from_uri would ask real AWS for the bucket's region.
        kwargs.update(endpoint_override=host.rstrip("/"), scheme=scheme, region=session.region_name or "us-east-1")
    else:
        kwargs["region"] = session.region_name or _bucket_region(location.bucket)
    if location.anonymous:
        return pafs.S3FileSystem(anonymous=True, **kwargs)
    credentials = session.get_credentials()
    if credentials is None:
        # boto3 walked the same chain pyarrow's SDK would and found nothing: public buckets only.
        kwargs["anonymous"] = True
    elif location.profile or not isinstance(credentials, RefreshableCredentials):
        # A named profile must be handed over: the C++ SDK's chain knows only AWS_PROFILE.
        frozen = credentials.get_frozen_credentials()
        kwargs.update(access_key=frozen.access_key, secret_key=frozen.secret_key, session_token=frozen.token)
    # Refreshable credentials (instance role, IRSA web identity, assume-role) are left to the
    # AWS C++ SDK's own chain: frozen copies would expire in the middle of a long job.
    return pafs.S3FileSystem(**kwargs)


def _bucket_region(bucket: str) -> str:
    try:
        return pafs.resolve_s3_region(bucket)
    except OSError:
        # Let the first real request report the problem with a proper message.
        return "us-east-1"


def describe_error(exc: BaseException, location: Location | None = None) -> str:
    """One line a user can act on, for a boto3/botocore/pyarrow storage error; never contains secrets."""
    where = location.uri if location is not None else "S3"
    bucket = location.bucket if location is not None and location.is_s3 else None
    endpoint = (location.endpoint_url if location is not None else None) or "the AWS S3 endpoint"
    if isinstance(exc, StorageError):
        return _one_line(str(exc))
    if isinstance(exc, (boto_errors.NoCredentialsError, boto_errors.PartialCredentialsError)):
        return (
            f"no usable S3 credentials for {where}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE, or run with an instance/pod role"
        )
    if isinstance(exc, _UNREACHABLE):
        return f"cannot reach the S3 endpoint {endpoint} (is the URL right and the server up?)"
    if isinstance(exc, boto_errors.ReadTimeoutError):
        return f"the S3 endpoint {endpoint} stopped answering (read timeout) for {where}"
    if isinstance(exc, boto_errors.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return _describe_code(code, status, str(error.get("Message", "")), where, bucket, endpoint)
    if isinstance(exc, FileNotFoundError):
        return _one_line(f"not found: {exc.filename or exc}")
    if isinstance(exc, OSError) and "AWS Error" in str(exc):
        return _describe_pyarrow(str(exc), where, bucket, endpoint)
    return _one_line(f"{type(exc).__name__}: {exc}")


def _describe_code(code: str, status: int | None, message: str, where: str, bucket: str | None, endpoint: str) -> str:
    if code == "NoSuchBucket":
        return f"bucket '{bucket}' does not exist at {endpoint}"
    if code in ("NoSuchKey", "404") or status == 404:
        return f"not found: {where}"
    if code == "InvalidAccessKeyId":
        return f"the S3 access key is not known to {endpoint} (InvalidAccessKeyId): check your credentials"
    if code == "SignatureDoesNotMatch":
        return f"the S3 secret key does not match the access key (SignatureDoesNotMatch) at {endpoint}"
    if code in ("ExpiredToken", "TokenRefreshRequired", "RequestExpired"):
        return f"the S3 session token has expired ({code}): refresh your credentials"
    if code in ("AccessDenied", "AllAccessDisabled", "403") or status == 403:
        return f"access denied to {where} ({code or 403}): check credentials and the bucket policy"
    if code in ("SlowDown", "Throttling", "ServiceUnavailable", "503"):
        return f"S3 kept throttling requests for {where} ({code}) after {MAX_ATTEMPTS} attempts"
    return _one_line(f"S3 error {code or status} for {where}: {message}")


def _describe_pyarrow(text: str, where: str, bucket: str | None, endpoint: str) -> str:
    upper = text.upper()
    if "NO_SUCH_BUCKET" in upper or "NOSUCHBUCKET" in upper:
        return f"bucket '{bucket}' does not exist at {endpoint}"
    if "INVALID_ACCESS_KEY_ID" in upper or "SIGNATURE_DOES_NOT_MATCH" in upper:
        return f"S3 rejected the credentials at {endpoint}: check your access key and secret key"
    if "ACCESS_DENIED" in upper or "HTTP STATUS CODE: 403" in upper:
        return f"access denied to {where}: check credentials and the bucket policy"
    if "NETWORK_CONNECTION" in upper or "CURLCODE" in upper:
        return f"cannot reach the S3 endpoint {endpoint} (is the URL right and the server up?)"
    return _one_line(text)


def _one_line(text: str, limit: int = 300) -> str:
    for name in _SECRET_ENV:
        secret = os.environ.get(name)
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."
