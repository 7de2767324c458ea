"""Provider credentials kept in AWS instead of our database: ``aws-sm://<secret id or ARN>[#json key]`` (Secrets
Manager) or ``aws-ssm://<parameter name>`` (SSM Parameter Store, decrypted). Values are cached in the process
for LLMOPS_SECRET_REFERENCE_TTL_SECONDS; boto3's usual credential chain and region apply (an ARN's own region wins).
"""

import json
import logging
import time

import boto3
from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings

logger = logging.getLogger(__name__)

SECRETS_MANAGER_SCHEME = "aws-sm://"
PARAMETER_STORE_SCHEME = "aws-ssm://"

_cache: dict[str, tuple[float, str]] = {}


class SecretReferenceError(Exception):
    pass


def is_secret_reference(value: str) -> bool:
    return value.startswith((SECRETS_MANAGER_SCHEME, PARAMETER_STORE_SCHEME))


def _arn_region(identifier: str) -> str | None:
    parts = identifier.split(":")
    return parts[3] if identifier.startswith("arn:") and len(parts) > 3 and parts[3] else None


def _secrets_manager_value(reference: str) -> str:
    secret_id, _, json_key = reference.removeprefix(SECRETS_MANAGER_SCHEME).partition("#")
    client = boto3.client("secretsmanager", region_name=_arn_region(secret_id))
    value = client.get_secret_value(SecretId=secret_id)["SecretString"]
    if not json_key:
        return value
    try:
        return str(json.loads(value)[json_key])
    except (ValueError, KeyError, TypeError) as exc:
        raise SecretReferenceError(f"secret {secret_id} has no JSON key {json_key!r}") from exc


def _parameter_store_value(reference: str) -> str:
    name = reference.removeprefix(PARAMETER_STORE_SCHEME)
    client = boto3.client("ssm", region_name=_arn_region(name))
    return client.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]


def secret_reference_resolve(reference: str) -> str:
    """The secret a reference names, from the cache while it is fresh; SecretReferenceError when AWS refuses."""
    now = time.monotonic()
    cached = _cache.get(reference)
    if cached is not None and cached[0] > now:
        return cached[1]
    try:
        if reference.startswith(SECRETS_MANAGER_SCHEME):
            value = _secrets_manager_value(reference)
        else:
            value = _parameter_store_value(reference)
    except (BotoCoreError, ClientError) as exc:
        raise SecretReferenceError(f"{reference} cannot be read: {exc}") from exc
    _cache[reference] = (now + settings.LLMOPS_SECRET_REFERENCE_TTL_SECONDS, value)
    return value


def secret_references_forget() -> None:
    _cache.clear()
