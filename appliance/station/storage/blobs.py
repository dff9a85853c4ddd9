"""Where the envelopes' bytes live: files under the station directory, or an S3-compatible store.

Both are written before the index row and read back with their SHA-256 checked. A
*location* is what the ``clips.path`` column holds: a path relative to the station directory
(files, unchanged since version 1: ``envelopes/<device>/<sequence:016d>-<sha[:16]>.env``) or an
object key (S3: content-addressed, ``<prefix>envelopes/<sha[:2]>/<sha256>``).

S3 store URL::

    s3://BUCKET[/PREFIX]?endpoint=http://127.0.0.1:8333&region=us-east-1&lock_days=3

Credentials come from boto3's usual chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``~/.aws/credentials``, an instance role), never from the URL. ``lock_days`` (optional) puts
each envelope under S3 Object Lock in COMPLIANCE mode for that many days: nobody, not even
the store's administrator, can delete or overwrite it earlier. Set it no longer than the
shortest retention period, or retention cannot delete on time (docs/storage.md).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import logging
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from appliance.common.durable import atomic_write, fsync_dir
from appliance.common.errors import ApplianceError, InputError

log = logging.getLogger("appliance.station.storage")


class EnvelopeBlobs(Protocol):
    kind: str   # "files" | "s3"

    def put(self, device_id: str, sequence: int, sha256: str, data: bytes) -> str:
        """Stores durably; returns the location. Idempotent for the same bytes."""

    def get(self, location: str) -> bytes: ...

    def delete(self, location: str) -> int:
        """Removes every copy (every object version); returns how many were removed."""

    def delete_many(self, locations: list[str]) -> dict[str, int | BaseException]:
        """:meth:`delete` for many; location -> removed count, or the error."""

    def exists(self, location: str) -> bool: ...

    def locations(self) -> Iterator[str]:
        """Every stored envelope's location (for re-indexing after a crash, and migration)."""

    def describe(self, location: str) -> str:
        """Where a location is, for messages: a file path or an s3:// URL."""

    def close(self) -> None: ...


class EnvelopeFiles:
    """``<station dir>/envelopes/<device>/*.env``, fsynced file and directory (the default)."""

    kind = "files"

    def __init__(self, station_dir: str | Path):
        self.station_dir = Path(station_dir)
        self.envelope_dir = self.station_dir / "envelopes"
        self.tmp = self.station_dir / "tmp"
        # Ciphertext only: 0750 (files 0640) lets the console (group appliance-station) read it
        # to show a revealed clip; tmp/ stays the receiver's own.
        self.envelope_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        self.tmp.mkdir(parents=True, exist_ok=True, mode=0o700)

    def put(self, device_id: str, sequence: int, sha256: str, data: bytes) -> str:
        device_dir = self.envelope_dir / device_id
        if not device_dir.exists():
            device_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
            fsync_dir(self.envelope_dir)
        rel = f"envelopes/{device_id}/{sequence:016d}-{sha256[:16]}.env"
        atomic_write(self.station_dir / rel, data, self.tmp)
        return rel

    def get(self, location: str) -> bytes:
        return (self.station_dir / location).read_bytes()

    def delete(self, location: str) -> int:
        path = self.station_dir / location
        try:
            path.unlink()
        except FileNotFoundError:
            return 0
        fsync_dir(path.parent)
        return 1

    def delete_many(self, locations: list[str]) -> dict[str, int | BaseException]:
        out: dict[str, int | BaseException] = {}
        parents: set[Path] = set()
        for location in locations:
            path = self.station_dir / location
            try:
                path.unlink()
                out[location] = 1
                parents.add(path.parent)
            except FileNotFoundError:
                out[location] = 0
            except OSError as exc:
                out[location] = exc
        for d in parents:   # one fsync per directory makes all its unlinks durable
            fsync_dir(d)
        return out

    def exists(self, location: str) -> bool:
        return (self.station_dir / location).exists()

    def locations(self) -> Iterator[str]:
        for leftover in self.tmp.glob(".*.tmp"):
            # ".<name>.<pid>.tmp": another receiver on this directory may be writing it now.
            pid = leftover.name.rsplit(".", 2)[-2]
            if not (pid.isdigit() and Path(f"/proc/{pid}").exists()):
                leftover.unlink(missing_ok=True)
        for device_dir in sorted(p for p in self.envelope_dir.iterdir() if p.is_dir()):
            for path in sorted(device_dir.glob("*.env")):
                yield str(path.relative_to(self.station_dir))

    def describe(self, location: str) -> str:
        return str(self.station_dir / location)

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str
    endpoint: str | None
    region: str
    lock_days: int

    @classmethod
    def parse(cls, url: str) -> S3Location:
        u = urllib.parse.urlsplit(url)
        fix = "e.g. s3://appliance-clips?endpoint=http://127.0.0.1:8333&lock_days=3"
        if u.scheme != "s3" or not u.netloc:
            raise InputError(f"--store {url!r}: not an s3://BUCKET[/PREFIX] URL (fix: {fix})")
        query = urllib.parse.parse_qs(u.query, keep_blank_values=True)
        unknown = set(query) - {"endpoint", "region", "lock_days"}
        if unknown:
            raise InputError(f"--store: unknown option(s) {', '.join(sorted(unknown))} "
                             f"(fix: only endpoint, region, lock_days; {fix})")
        if "@" in u.netloc:
            raise InputError("--store: credentials do not belong in the URL (fix: set AWS_ACCESS_KEY_ID and "
                             "AWS_SECRET_ACCESS_KEY in the service's environment)")
        try:
            lock_days = int(query.get("lock_days", ["0"])[0])
            if not 0 <= lock_days <= 90:
                raise ValueError
        except ValueError:
            raise InputError("--store lock_days: must be a whole number of days 0..90, at most the shortest "
                             "retention period (fix: e.g. lock_days=3, or leave it out)") from None
        prefix = u.path.strip("/")
        return cls(u.netloc, prefix + "/" if prefix else "", query.get("endpoint", [None])[0],
                   query.get("region", ["us-east-1"])[0], lock_days)


class S3Envelopes:
    """Envelopes as objects named by their SHA-256 in an S3-compatible bucket (boto3)."""

    kind = "s3"

    def __init__(self, url: str, *, create_bucket: bool = True):
        try:
            import boto3
            import botocore.config
            import botocore.exceptions
        except ImportError:
            raise InputError("S3 storage needs boto3 (fix: pip install 'appliance[scale]')") from None
        self.url = url
        self.where = S3Location.parse(url)
        self._errors = botocore.exceptions
        cfg = botocore.config.Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5,
                                     read_timeout=60, max_pool_connections=16,
                                     request_checksum_calculation="when_required",
                                     response_checksum_validation="when_required")
        self.s3 = boto3.session.Session().client("s3", endpoint_url=self.where.endpoint,
                                                 region_name=self.where.region, config=cfg)
        self.bucket = self.where.bucket
        self.versioned = False
        self._check_bucket(create_bucket)

    def _check_bucket(self, create: bool) -> None:
        e = self._errors
        try:
            self.s3.head_bucket(Bucket=self.bucket)
        except e.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code not in ("404", "NoSuchBucket", "NotFound") or not create:
                raise InputError(f"object store {self.url}: bucket {self.bucket!r}: {code or exc} (fix: check the "
                                 f"bucket name and the AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY of the service)") \
                    from None
            self.s3.create_bucket(Bucket=self.bucket, ObjectLockEnabledForBucket=self.where.lock_days > 0)
            log.info("created bucket %s%s", self.bucket, " with object lock" if self.where.lock_days else "")
        except (e.EndpointConnectionError, e.ConnectTimeoutError) as exc:
            raise InputError(f"object store {self.url} unreachable: {exc} (fix: start it, or correct "
                             f"endpoint= in --store)") from None
        status = self.s3.get_bucket_versioning(Bucket=self.bucket).get("Status", "")
        self.versioned = status in ("Enabled", "Suspended")
        if self.where.lock_days:
            try:
                lock = self.s3.get_object_lock_configuration(Bucket=self.bucket)["ObjectLockConfiguration"]
            except e.ClientError:
                lock = {}
            if lock.get("ObjectLockEnabled") != "Enabled":
                raise InputError(f"object store {self.url}: lock_days={self.where.lock_days} but bucket "
                                 f"{self.bucket!r} has no object lock (fix: a bucket created with object lock, "
                                 f"or leave lock_days out)")

    def key(self, sha256: str) -> str:
        return f"{self.where.prefix}envelopes/{sha256[:2]}/{sha256}"

    def put(self, device_id: str, sequence: int, sha256: str, data: bytes) -> str:
        key = self.key(sha256)
        extra: dict[str, Any] = {"Metadata": {"device-id": device_id, "sequence": str(sequence)}}
        if self.where.lock_days:
            until = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=self.where.lock_days)
            extra.update(ObjectLockMode="COMPLIANCE", ObjectLockRetainUntilDate=until)
        # The store acknowledges a PUT only once the object is durable; ContentMD5 guards the bytes.
        md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentMD5=md5, **extra)
        return key

    def get(self, location: str) -> bytes:
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=location)["Body"].read()
        except self._errors.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise FileNotFoundError(self.describe(location)) from None
            raise

    def delete(self, location: str) -> int:
        try:
            return self._delete(location)
        except self._errors.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            lock = ""
            if code == "AccessDenied" and self.where.lock_days:
                lock = f" (its object lock, lock_days={self.where.lock_days}, has not expired yet)"
            raise ApplianceError(f"{self.describe(location)}: the store refused the deletion: {code}{lock}") from None

    def _delete(self, location: str) -> int:
        if not self.versioned:
            if not self.exists(location):
                return 0
            self.s3.delete_object(Bucket=self.bucket, Key=location)
            return 1
        # A plain DELETE on a versioned bucket only adds a delete marker and keeps the bytes:
        # remove every version (object lock refuses this before the lock expires).
        removed = 0
        pages = self.s3.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=location)
        for page in pages:
            for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
                if v["Key"] != location:
                    continue
                self.s3.delete_object(Bucket=self.bucket, Key=location, VersionId=v["VersionId"])
                removed += "ETag" in v   # versions, not markers
        return removed

    def delete_many(self, locations: list[str]) -> dict[str, int | BaseException]:
        def one(location: str) -> int | BaseException:
            try:
                return self.delete(location)
            except (ApplianceError, self._errors.BotoCoreError) as exc:
                return exc

        with ThreadPoolExecutor(8) as pool:
            return dict(zip(locations, pool.map(one, locations), strict=True))

    def exists(self, location: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=location)
            return True
        except self._errors.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def locations(self) -> Iterator[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                   Prefix=f"{self.where.prefix}envelopes/")
        for page in pages:
            for obj in page.get("Contents", []):
                yield obj["Key"]

    def describe(self, location: str) -> str:
        return f"s3://{self.bucket}/{location}"

    def close(self) -> None:
        self.s3.close()


def open_blobs(station_dir: str | Path, store_url: str | None) -> EnvelopeBlobs:
    if not store_url or store_url in ("files", "file:"):
        return EnvelopeFiles(station_dir)
    if store_url.startswith("s3://"):
        return S3Envelopes(store_url)
    raise InputError(f"--store {store_url!r}: unknown store (fix: leave it out for files in the station "
                     f"directory, or give s3://BUCKET?endpoint=URL)")
