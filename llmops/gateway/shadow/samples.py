"""A sampled request as the request path hands it to the evaluation worker: sealed (core/crypto, as the response cache
keeps prompts and answers at rest), so its prompt and answer never sit in the Celery broker in clear."""

from dataclasses import asdict, dataclass, field

import orjson

from core.crypto import decrypt_bytes, encrypt_bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ShadowSample:
    """What replaying a request's levers needs: who sent it (its evaluation calls are charged to the same key), how it
    was decided, what was sent upstream, and what it was answered."""

    request_id: str
    tenant_id: int
    team_id: int
    api_key_id: int
    customer: str = ""
    tags: list[str] = field(default_factory=list)
    endpoint: str = "/v1/chat/completions"
    served_model: str
    rule: str = ""
    task_type: str = ""
    # Lever (billing.Lever value) → the name of the model whose answer is its reference.
    levers: dict[str, str]
    # The chat body as sent upstream: after caps and compression.
    body: dict
    # The messages before compression, when the compression lever was sampled.
    uncompressed_messages: list | None = None
    answer: str


def sample_seal(sample: ShadowSample) -> str:
    return encrypt_bytes(orjson.dumps(asdict(sample))).decode()


def sample_open(sealed: str) -> ShadowSample:
    """Raises core.crypto.CredentialDecryptionError for a sample sealed under a key no longer configured."""
    return ShadowSample(**orjson.loads(decrypt_bytes(sealed.encode())))
