"""The S3 object store: the durable record of every accepted image, job and result.

Keys come from :mod:`inspectq.keyspace`, never from raw user input.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from inspectq.config import Settings


class StorageUnavailable(Exception):
    """S3 could not be reached or answered with a server error: worth retrying."""


class ObjectExists(Exception):
    """A conditional write found the key already written (first writer wins)."""


#: DeleteObjects takes at most this many keys per request.
_DELETE_BATCH = 1000


def _is_server_side(error: ClientError) -> bool:
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return status >= 500 or status == 429


class ObjectStore:
    """A thin, explicit wrapper over one boto3 S3 client and one bucket."""

    def __init__(self, settings: Settings) -> None:
        self.bucket = settings.s3_bucket
        self._s3 = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=settings.s3_secret_access_key.get_secret_value(),
            config=Config(
                connect_timeout=settings.s3_connect_timeout_s,
                read_timeout=settings.s3_read_timeout_s,
                retries={"max_attempts": settings.s3_max_attempts, "mode": "standard"},
                s3={"addressing_style": "path"},
            ),
        )

    def ensure_bucket(self) -> None:
        """Create the bucket if it is missing (idempotent)."""
        try:
            self._s3.head_bucket(Bucket=self.bucket)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                raise self._translate(error) from error
            try:
                self._s3.create_bucket(Bucket=self.bucket)
            except ClientError as create_error:
                code = create_error.response.get("Error", {}).get("Code")
                if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise self._translate(create_error) from create_error
        except BotoCoreError as error:
            raise StorageUnavailable(str(error)) from error

    def ping(self) -> None:
        """Raise :class:`StorageUnavailable` unless the bucket answers."""
        try:
            self._s3.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as error:
            raise StorageUnavailable(str(error)) from error

    def put(
        self,
        key: str,
        body: bytes,
        content_type: str = "application/octet-stream",
        *,
        only_if_new: bool = False,
    ) -> None:
        """Write ``body`` at ``key``; with ``only_if_new`` a second write raises ObjectExists."""
        extra: dict[str, Any] = {"IfNoneMatch": "*"} if only_if_new else {}
        try:
            self._s3.put_object(
                Bucket=self.bucket, Key=key, Body=body, ContentType=content_type, **extra
            )
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code")
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if only_if_new and (code in ("PreconditionFailed", "ConditionalRequestConflict")
                                or status in (409, 412)):
                raise ObjectExists(key) from error
            raise self._translate(error) from error
        except BotoCoreError as error:
            raise StorageUnavailable(str(error)) from error

    def put_json(self, key: str, value: Any, *, only_if_new: bool = False) -> None:
        self.put(
            key,
            json.dumps(value, separators=(",", ":")).encode(),
            "application/json",
            only_if_new=only_if_new,
        )

    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is no such key."""
        try:
            response = self._s3.get_object(Bucket=self.bucket, Key=key)
            return response["Body"].read()
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise self._translate(error) from error
        except BotoCoreError as error:
            raise StorageUnavailable(str(error)) from error

    def get_json(self, key: str) -> Any | None:
        body = self.get(key)
        return None if body is None else json.loads(body)

    def delete(self, key: str) -> None:
        try:
            self._s3.delete_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            raise self._translate(error) from error
        except BotoCoreError as error:
            raise StorageUnavailable(str(error)) from error

    def delete_many(self, keys: list[str]) -> None:
        """Delete ``keys`` with one DeleteObjects request per 1,000 (S3's limit per call):
        cheaper than a delete per key when sweeping many at once."""
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = [{"Key": key} for key in keys[start:start + _DELETE_BATCH]]
            try:
                response = self._s3.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            except ClientError as error:
                raise self._translate(error) from error
            except BotoCoreError as error:
                raise StorageUnavailable(str(error)) from error
            if response.get("Errors"):
                first = response["Errors"][0]
                raise StorageUnavailable(
                    f"{len(response['Errors'])} of {len(batch)} deletes failed, first "
                    f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}"
                )

    def list_keys(self, prefix: str, start_after: str = "") -> list[str]:
        """All keys under ``prefix`` (paginated under the hood)."""
        return list(self.iter_keys(prefix, start_after))

    def iter_keys(self, prefix: str, start_after: str = "") -> Iterator[str]:
        """The keys under ``prefix`` in key order, one page (1,000) at a time: constant
        memory over a bucket of any size."""
        paginator = self._s3.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(
                Bucket=self.bucket, Prefix=prefix, StartAfter=start_after
            ):
                yield from (item["Key"] for item in page.get("Contents", []))
        except ClientError as error:
            raise self._translate(error) from error
        except BotoCoreError as error:
            raise StorageUnavailable(str(error)) from error

    def _translate(self, error: ClientError) -> Exception:
        if _is_server_side(error):
            return StorageUnavailable(str(error))
        return error
