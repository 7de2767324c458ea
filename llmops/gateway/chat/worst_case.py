"""The most a chat completion can cost before it is made: what budgets reserve and token rate limits count.

The upstream bills the prompt once and every choice's output: `n` answers (`best_of` where a provider takes it)
of up to max_tokens each, and with a `prediction` the predicted tokens it rejects, billed as output too. A request
without max_tokens may run to the model's maximum output (the catalog's `max_output_tokens`); where the catalog
does not know it, LLMOPS_RESERVATION_MAX_TOKENS is reserved and sent as max_tokens, so the bound holds. Any model
of the chain may serve, so the dearest is reserved. A model that may write the prompt to its prompt cache (a
checkpoint the client or the gateway sets, routing.providers.prompt_cache) bills those tokens at the cache-write
price, above the input price: its prompt is reserved at the dearer of the two. Images and files in the prompt are
reserved at the most each model bills for them (routing.media). The prompt is counted with tiktoken, in the encoding
of the model it was counted for (a chain's first model, the served one). A model that bills another count of the same
text has its prompt's text reserved at PROMPT_MARGIN times that count: a provider of another kind (its own tokenizer,
Anthropic's a noticeably larger one), and, other than the model counted for, an `openai` one whose name tiktoken
does not know (an OpenAI-compatible server's Llama or Mistral) or whose encoding is another (a gpt-4-turbo fallback,
cl100k_base, of gpt-4o, o200k_base). The model counted for is reserved at its count whatever its name: a first model
with a tokenizer of its own bills another count than cl100k_base's, which the budget does not hold. The margin is an
allowance, not a bound: cl100k_base counts some scripts (Devanagari, Tamil) at 4x o200k_base.
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from billing.budgets.reservations import BudgetExceeded
from billing.ledger.costs import usage_cost
from llmops.gateway.errors import NOT_RETRYABLE, GatewayError
from routing.catalog import ModelEntry
from routing.max_tokens import requested_max_tokens
from routing.media import NO_MEDIA, PromptMedia
from routing.providers.prompt_cache import effective_provider_cache, may_write_cache
from routing.tokens import count_text_tokens, encoding_name_for, known_encoding_name

CHOICE_FIELDS = ("n", "best_of")
PROMPT_MARGIN = 1.5
EXACTLY_COUNTED_KINDS = ("openai",)


def counted_exactly(model: ModelEntry, *, counted_for: str) -> bool:
    """Whether ``model`` bills the prompt's text at the count made for the upstream model ``counted_for``: it is that
    model, or an OpenAI one whose encoding tiktoken knows and is the one the count was made in."""
    if model.provider.kind not in EXACTLY_COUNTED_KINDS:
        return False
    if model.upstream_name == counted_for:
        return True
    return known_encoding_name(model.upstream_name) == encoding_name_for(counted_for)


def reserved_prompt_tokens(model: ModelEntry, prompt_tokens: int, *, counted_for: str | None = None) -> int:
    """The prompt's text tokens as its worst case holds them: tiktoken's count made for the upstream model
    ``counted_for`` (by default ``model`` itself), with PROMPT_MARGIN where ``model`` bills another count."""
    if counted_exactly(model, counted_for=counted_for or model.upstream_name):
        return prompt_tokens
    return math.ceil(prompt_tokens * PROMPT_MARGIN)


def _predicted_text(prediction) -> str:
    content = prediction.get("content") if isinstance(prediction, dict) else None
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""


def prediction_chars(body: dict) -> int:
    """How much text counting the request's `prediction` reads."""
    return len(_predicted_text(body.get("prediction")))


@dataclass(frozen=True, slots=True)
class OutputBound:
    """What one request may make the upstream generate and bill as output."""

    # The client's max_tokens / max_completion_tokens after caps; None when it sent neither.
    max_tokens: int | None
    # Answers generated: the larger of `n` and `best_of`.
    choices: int = 1
    # Tokens of a `prediction`: rejected ones are billed as output on top of the answer.
    predicted_tokens: int = 0

    @classmethod
    def of(cls, body: dict, *, model: str) -> "OutputBound":
        """`model` is an upstream name, for the encoding the prediction is counted in."""
        choices = max([body.get(field) or 1 for field in CHOICE_FIELDS])
        predicted = _predicted_text(body.get("prediction"))
        return cls(
            max_tokens=requested_max_tokens(body),
            choices=choices,
            predicted_tokens=count_text_tokens(predicted, model=model) if predicted else 0,
        )

    def per_choice(self, model: ModelEntry, *, fallback: int) -> int:
        """Completion tokens one answer of `model` may have."""
        ceiling = model.max_output_tokens
        if self.max_tokens is None:
            return ceiling or fallback
        return min(self.max_tokens, ceiling) if ceiling else self.max_tokens

    def completion_tokens(self, model: ModelEntry, *, fallback: int) -> int:
        return self.choices * (self.per_choice(model, fallback=fallback) + self.predicted_tokens)


def cache_writers(models: Iterable[ModelEntry], body: dict, *, provider_cache: str) -> frozenset[str]:
    """The names of the models among ``models`` whose answer to ``body`` may write its prompt to their prompt cache,
    under the routing rule's ``provider_cache`` as it applies to each."""
    return frozenset(
        model.name
        for model in models
        if may_write_cache(
            body,
            kind=model.provider.kind,
            upstream_name=model.upstream_name,
            provider_cache=effective_provider_cache(provider_cache, prices=model.prices),
        )
    )


def worst_case_cost(
    model: ModelEntry,
    *,
    prompt_tokens: int,
    completion_tokens: int,
    writes_cache: bool = False,
    media: PromptMedia = NO_MEDIA,
    counted_for: str | None = None,
) -> Decimal:
    """``prompt_tokens``: the prompt's text as tiktoken counts it for ``counted_for`` (reserved_prompt_tokens), to
    which ``media`` adds what its other parts may bill. With ``writes_cache``, every prompt token is priced at the
    dearer of the input and cache-write prices."""
    prompt_tokens = media.prompt_tokens(model, reserved_prompt_tokens(model, prompt_tokens, counted_for=counted_for))
    prices = model.prices
    dearer_write = (
        prices.cache_write_per_million is not None and prices.cache_write_per_million > prices.input_per_million
    )
    return usage_cost(
        prices=prices,
        prompt_tokens=prompt_tokens,
        cached_tokens=0,
        cache_write_tokens=prompt_tokens if writes_cache and dearer_write else 0,
        completion_tokens=completion_tokens,
    )


def chain_worst_case(
    chain: list[ModelEntry],
    *,
    prompt_tokens: int,
    bound: OutputBound,
    fallback: int,
    cache_writers: frozenset[str] = frozenset(),
    media: PromptMedia = NO_MEDIA,
    counted_for: str | None = None,
) -> Decimal:
    """The dearest model's worst case: whichever of the chain serves, the request costs at most this.
    ``prompt_tokens``: the prompt's text counted for the upstream model ``counted_for``, by default the chain's first
    (a chain of a fallback alone, or of the model a request is downgraded to, names the served model's);
    ``cache_writers``: the models that may write the prompt to their cache (``cache_writers()``); ``media``: the
    prompt's parts that are not text."""
    counted_for = counted_for or chain[0].upstream_name
    return max(
        worst_case_cost(
            model,
            prompt_tokens=prompt_tokens,
            completion_tokens=bound.completion_tokens(model, fallback=fallback),
            writes_cache=model.name in cache_writers,
            media=media,
            counted_for=counted_for,
        )
        for model in chain
    )


def body_worst_case(
    model: ModelEntry, body: dict, *, prompt_tokens: int, fallback: int, provider_cache: str
) -> Decimal:
    """``body``'s worst case on ``model`` alone, its prompt's text counted at ``prompt_tokens`` in the model's encoding:
    what a call the gateway plans outside a live request's admission reserves (a batch line, an evaluation's call)."""
    return chain_worst_case(
        [model],
        prompt_tokens=prompt_tokens,
        bound=OutputBound.of(body, model=model.upstream_name),
        fallback=fallback,
        cache_writers=cache_writers([model], body, provider_cache=provider_cache),
        media=PromptMedia.of(body["messages"]),
    )


def fitting_max_tokens(
    chain: list[ModelEntry],
    *,
    prompt_tokens: int,
    bound: OutputBound,
    fallback: int,
    available: Decimal,
    cache_writers: frozenset[str] = frozenset(),
    media: PromptMedia = NO_MEDIA,
    counted_for: str | None = None,
) -> int | None:
    """The largest max_tokens below the request's own whose worst case (``chain_worst_case``) fits in `available`; None
    when none does."""
    upper = max(bound.per_choice(model, fallback=fallback) for model in chain) - 1

    def fits(max_tokens: int) -> bool:
        trial = OutputBound(max_tokens, bound.choices, bound.predicted_tokens)
        worst = chain_worst_case(
            chain,
            prompt_tokens=prompt_tokens,
            bound=trial,
            fallback=fallback,
            cache_writers=cache_writers,
            media=media,
            counted_for=counted_for,
        )
        return worst <= available

    if upper < 1 or not fits(1):
        return None
    low, high = 1, upper
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


def budget_refusal(
    exceeded: BudgetExceeded,
    *,
    fitting: int | None = None,
    choices: int = 1,
    context: str = "",
    advice: str = "",
    has_media: bool = False,
) -> GatewayError:
    """The 429 for a refused reservation: the budget's own account (spent, or the worst case does not fit what is
    left, with the amounts), `context` before it, and when the money is not spent, the max_tokens that would fit (or
    `advice`, for a request that has no max_tokens). ``has_media``: the prompt has images or files."""
    message = f"{context}{exceeded}"
    if exceeded.spent_usd < exceeded.limit_usd:
        if advice:
            message += f" {advice}"
        elif fitting is not None:
            per = f" per choice ({choices} choices)" if choices > 1 else ""
            message += f" With max_tokens={fitting}{per} it would fit."
        else:
            shorter = "a shorter prompt or fewer images or files" if has_media else "a shorter prompt"
            message += f" No max_tokens would fit; send {shorter}" + (" or fewer choices (n)." if choices > 1 else ".")
    # A worst case over the budget's whole limit fits in no period: waiting for the next one is no use.
    never_fits = exceeded.requested_usd > exceeded.limit_usd
    return GatewayError(
        message,
        status=429,
        code="budget_exceeded",
        error_type="insufficient_quota",
        headers=NOT_RETRYABLE if never_fits else {"Retry-After": str(exceeded.retry_after_seconds)},
    )
