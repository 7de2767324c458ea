"""The kinds of provider: for each, the adapter that speaks its API and the Provider fields it needs and reads.

This is the one list of kinds. The model's choices, ``Provider.clean()``, the admin's provider form, the catalog and
``routing.upstream`` read it, so a new kind is an entry here and an adapter module beside this one.
"""

from dataclasses import dataclass

# What a provider is reached and authenticated with, in the order the admin shows them. ``credential`` is written
# encrypted to ``credential_encrypted``; ``credential_env_var`` names an environment variable holding it instead.
CONNECTION_FIELDS = ("base_url", "region", "credential", "credential_env_var")
CREDENTIAL_FIELDS = ("credential", "credential_env_var")


@dataclass(frozen=True, slots=True)
class ProviderKindSpec:
    """A kind of upstream API: which adapter calls it, and what a Provider of the kind must and may say."""

    value: str
    label: str
    # The module with ``chat_completion(provider, body, *, provider_cache)`` and ``open_chat_stream(...)`` alike, and
    # ``embeddings(provider, body)`` when ``embeddings`` is set.
    adapter: str
    # What a field holds for this kind, in the admin's words.
    notes: dict[str, str]
    # Connection fields the kind cannot run without, and the others it reads when they are set; by default an HTTP
    # API at a base URL, with an optional key.
    required: tuple[str, ...] = ("base_url",)
    optional: tuple[str, ...] = CREDENTIAL_FIELDS
    # It has OpenAI's Batch API, so whole batches can be delegated to it at its batch discount.
    batch_endpoint: bool = False
    # It has OpenAI's embeddings API, so its models of kind embedding can serve /v1/embeddings.
    embeddings: bool = False

    @property
    def fields(self) -> tuple[str, ...]:
        return self.required + self.optional

    def reads(self, field: str) -> bool:
        return field in self.required or field in self.optional


PROVIDER_KINDS = (
    ProviderKindSpec(
        value="openai",
        label="OpenAI-compatible",
        adapter="routing.providers.openai",
        notes={
            "base_url": "the API root, e.g. https://api.openai.com/v1",
            "credential": "the API key, sent as a bearer token",
        },
        batch_endpoint=True,
        embeddings=True,
    ),
    ProviderKindSpec(
        value="anthropic",
        label="Anthropic Messages API",
        adapter="routing.providers.anthropic",
        notes={
            "base_url": "the API root with its version, e.g. https://api.anthropic.com/v1",
            "credential": "the API key, sent as x-api-key",
        },
    ),
    ProviderKindSpec(
        value="bedrock",
        label="AWS Bedrock Converse",
        adapter="routing.providers.bedrock",
        notes={
            "region": "the AWS region, e.g. us-east-1",
            "base_url": "blank for AWS's own endpoint, else a VPC endpoint or a test server",
            "credential": "ACCESS_KEY_ID:SECRET_ACCESS_KEY (optionally :SESSION_TOKEN); blank uses boto3's default "
            "chain (environment, profile, instance role)",
        },
        required=("region",),
        optional=("base_url", *CREDENTIAL_FIELDS),
    ),
)
PROVIDER_KINDS_BY_VALUE = {spec.value: spec for spec in PROVIDER_KINDS}


def provider_kind(value: str) -> ProviderKindSpec | None:
    return PROVIDER_KINDS_BY_VALUE.get(value)
