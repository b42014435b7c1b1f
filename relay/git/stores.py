"""The object store named by the settings: S3 when an endpoint is set, else the data dir."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from relay.config import Settings
from relay.git.fsstore import FilesystemStore
from relay.git.objectstore import ObjectStore
from relay.git.probe import Probe, ProbeReport
from relay.git.s3store import S3Config, S3Store

OBJECTS_DIR = "objects"


def describe(settings: Settings) -> str:
    if settings.s3_endpoint:
        return f"S3 bucket {settings.s3_bucket} at {settings.s3_endpoint}"
    return f"directory {settings.data_path / OBJECTS_DIR}"


@asynccontextmanager
async def open_object_store(settings: Settings) -> AsyncIterator[ObjectStore]:
    store: ObjectStore
    if settings.s3_endpoint:
        assert settings.s3_bucket is not None
        store = S3Store(
            S3Config(
                endpoint=settings.s3_endpoint,
                bucket=settings.s3_bucket,
                region=settings.s3_region,
                access_key=settings.s3_access_key,
                secret_key=settings.s3_secret_key,
                addressing=settings.s3_addressing,
                timeout_seconds=settings.s3_timeout_seconds,
            )
        )
    else:
        store = FilesystemStore(settings.data_path / OBJECTS_DIR)
    try:
        yield store
    finally:
        await store.aclose()


async def probe_store(store: ObjectStore, settings: Settings) -> ProbeReport:
    return await Probe(
        store,
        writers=settings.git_probe_writers,
        rounds=settings.git_probe_rounds,
        op_timeout=settings.s3_timeout_seconds,
        deadline=settings.git_probe_deadline_seconds,
    ).run()
