"""A paid embedder's call is split among the requests whose texts it embedded: by each text's tokens, the parts adding
up to what the provider billed; an embedder nobody bills charges nobody."""

import contextvars
import logging
import threading

import pytest

from routing.cache.embedders import EmbeddingShare, embed_soon, embedding_payer, on_embedding_thread
from tests.cache.embedders import BILLED_EXTRA_TOKENS, BilledEmbedder


class RecordingPayer:
    def __init__(self):
        self.shares: list[EmbeddingShare] = []

    def charge(self, share: EmbeddingShare) -> None:
        self.shares.append(share)


def queued_by(payer: RecordingPayer | None, text: str):
    """``embed_soon(text)`` as the request ``payer`` pays for queues it."""

    def queue():
        embedding_payer.set(payer)
        return embed_soon(text)

    return contextvars.copy_context().run(queue)


def embedded_together(queued: list[tuple[RecordingPayer | None, str]]) -> None:
    """The texts queued while the embedding thread is busy, so one call embeds them all; returns once they are
    charged (a task queued after them runs after their call's charges)."""
    gate = threading.Event()
    held = on_embedding_thread(gate.wait, 10)
    futures = [queued_by(payer, text) for payer, text in queued]
    gate.set()
    assert held.result(timeout=10)
    for future in futures:
        future.result(timeout=10)
    on_embedding_thread(lambda: None).result(timeout=10)


@pytest.fixture
def billed_embedder(settings):
    settings.LLMOPS_CACHE_EMBEDDER = "tests.cache.embedders.BilledEmbedder"
    BilledEmbedder.calls = []
    return BilledEmbedder


def test_one_call_is_split_by_each_text_s_tokens_and_the_parts_add_up_to_the_bill(billed_embedder):
    acme, globex = RecordingPayer(), RecordingPayer()
    # 2, 9 and 10 tokens; billed 21 + 5 = 26: 26 x 2/21 = 2.48, 26 x 9/21 = 11.14, 26 x 10/21 = 12.38. The floors
    # leave 1 token, which goes to the largest remainder (2.48's).
    embedded_together(
        [
            (acme, "short question"),
            (globex, "what is the refund policy for annual plans?"),
            (acme, "a second, somewhat longer question from the same tenant"),
        ]
    )

    assert len(billed_embedder.calls) == 1
    (acme_share,), (globex_share,) = acme.shares, globex.shares
    assert (acme_share.prompt_tokens, globex_share.prompt_tokens) == (3 + 12, 11)
    assert acme_share.prompt_tokens + globex_share.prompt_tokens == 21 + BILLED_EXTRA_TOKENS
    assert acme_share.call_tokens == globex_share.call_tokens == (15, 11)
    assert (acme_share.index, globex_share.index) == (0, 1)
    assert (acme_share.model, acme_share.estimated) == (BilledEmbedder.model, False)


def test_a_text_queued_outside_any_request_is_charged_to_nobody(billed_embedder, caplog):
    acme = RecordingPayer()
    with caplog.at_level(logging.WARNING, logger="routing.cache.embedders"):
        embedded_together([(None, "what is the refund policy for annual plans?"), (acme, "short question")])

    # 9 and 2 tokens, billed 16: 13.09 and 2.91, the spare token to the second.
    (share,) = acme.shares
    assert (share.prompt_tokens, share.call_tokens, share.index) == (3, (13, 3), 1)
    assert "13 tokens embedded outside any request are charged to nobody" in caplog.text


def test_an_embedder_nobody_bills_charges_nobody(gated_embedder):
    acme = RecordingPayer()
    embedded_together([(acme, "short question")])
    assert gated_embedder.calls == [["short question"]]
    assert acme.shares == []
