"""Files in S3 when LLMOPS_FILES_S3_BUCKET is set (moto stands in for AWS)."""

import io

import boto3
import pytest
from moto import mock_aws

from tests.batch.conftest import chat_line, jsonl

pytestmark = pytest.mark.live


@pytest.fixture
def s3_bucket(settings, monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="llmops-files-test")
        settings.LLMOPS_FILES_S3_BUCKET = "llmops-files-test"
        yield boto3.client("s3")


def test_upload_read_and_delete_go_to_s3(s3_bucket, live_broker, openai_client, acme):
    content = jsonl([chat_line("a", "acme-small")])

    file_id = openai_client.files.create(file=("in.jsonl", io.BytesIO(content)), purpose="batch").id
    stored = s3_bucket.list_objects_v2(Bucket="llmops-files-test")["Contents"]
    read_back = openai_client.files.content(file_id).content
    openai_client.files.delete(file_id)

    assert [obj["Key"] for obj in stored] == [f"llmops-files/{acme.tenant.pk}/{file_id}.jsonl"]
    assert read_back == content
    assert s3_bucket.list_objects_v2(Bucket="llmops-files-test").get("KeyCount") == 0
