"""Where file contents live: under MEDIA_ROOT in the embedded default, in S3 when LLMOPS_FILES_S3_BUCKET is set.

Rows in ``File`` hold the metadata and a storage key; the bytes are here, written once and never changed.
"""

from pathlib import Path

import boto3
from django.conf import settings


class FileStorageError(Exception):
    pass


class DiskFileStore:
    def __init__(self, root: Path):
        self.root = root

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise FileStorageError(f"storage key {key!r} leaves the files folder")
        return path

    def save(self, key: str, content: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)

    def read(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise FileStorageError(f"file content {key!r} is missing from {self.root}") from exc

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


class S3FileStore:
    def __init__(self, bucket: str, prefix: str):
        self.bucket = bucket
        self.prefix = prefix
        self.client = boto3.client("s3")

    def save(self, key: str, content: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=content)

    def read(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()
        except self.client.exceptions.NoSuchKey as exc:
            raise FileStorageError(f"file content {key!r} is missing from s3://{self.bucket}") from exc

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)


def file_store() -> DiskFileStore | S3FileStore:
    if settings.LLMOPS_FILES_S3_BUCKET:
        return S3FileStore(settings.LLMOPS_FILES_S3_BUCKET, settings.LLMOPS_FILES_S3_PREFIX)
    return DiskFileStore(Path(settings.MEDIA_ROOT) / "llmops-files")
