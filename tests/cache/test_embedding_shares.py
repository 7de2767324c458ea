"""A paid embedder's call is split among the requests whose texts it embedded: by each text's tokens, the parts adding
up to what the provider billed; an embedder nobody bills charges nobody."""

import contextvars
import logging
import threading

import pytest

from routing.cache import embedders
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


def embedded_together(queued: list[tuple[RecordingPayer | None, str]], *, task=None):
    """The texts queued while the embedding thread is busy, so one call embeds them all (and ``task`` runs in the same
    batch); returns the task's future once the texts are embedded and charged."""
    gate = threading.Event()
    held = on_embedding_thread(gate.wait, 10)
    futures = [queued_by(payer, text) for payer, text in queued]
    in_batch = on_embedding_thread(task or (lambda: None))
    gate.set()
    assert held.result(timeout=10)
    for future in futures:
        future.result(timeout=5)
    assert embedders.embeddings_flush(timeout=10)
    return in_batch


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
    # One call, the same object in both shares: it is priced once for both.
    assert acme_share.call is globex_share.call
    assert acme_share.call.parts == (15, 11)
    assert (acme_share.index, globex_share.index) == (0, 1)
    assert (acme_share.call.model, acme_share.call.estimated) == (BilledEmbedder.model, False)


def test_a_text_queued_outside_any_request_is_charged_to_nobody(billed_embedder, caplog):
    acme = RecordingPayer()
    with caplog.at_level(logging.WARNING, logger="routing.cache.embedders"):
        embedded_together([(None, "what is the refund policy for annual plans?"), (acme, "short question")])

    # 9 and 2 tokens, billed 16: 13.09 and 2.91, the spare token to the second.
    (share,) = acme.shares
    assert (share.prompt_tokens, share.call.parts, share.index) == (3, (13, 3), 1)
    assert "13 tokens embedded outside any request are charged to nobody" in caplog.text


def test_an_embedder_nobody_bills_charges_nobody(gated_embedder):
    acme = RecordingPayer()
    embedded_together([(acme, "short question")])
    assert gated_embedder.calls == [["short question"]]
    assert acme.shares == []


def test_the_batch_s_tasks_run_before_its_tokens_are_counted(billed_embedder, monkeypatch):
    """The cross-encoder's scoring a lookup waits on is a task of the batch: it does not wait for the metering."""
    happened = []
    count = embedders.count_text_tokens

    def counted(text, *, model):
        happened.append("count")
        return count(text, model=model)

    monkeypatch.setattr(embedders, "count_text_tokens", counted)
    acme = RecordingPayer()

    scored = embedded_together([(acme, "short question")], task=lambda: happened.append("task"))

    assert scored.result(timeout=5) is None
    assert happened == ["task", "count"]
    assert [share.prompt_tokens for share in acme.shares] == [2 + BILLED_EXTRA_TOKENS]


def test_metering_that_fails_costs_the_batch_s_lookups_nothing(billed_embedder, monkeypatch, caplog):
    def broken(text, *, model):
        raise RuntimeError("tiktoken's files are missing")

    monkeypatch.setattr(embedders, "count_text_tokens", broken)
    acme = RecordingPayer()

    with caplog.at_level(logging.ERROR, logger="routing.cache.embedders"):
        scored = embedded_together([(acme, "short question")], task=lambda: "scores")

    # The batch's texts have their vectors (embedded_together waited for them) and its task its result; the call is
    # charged to nobody.
    assert scored.result(timeout=5) == "scores"
    assert acme.shares == []
    assert "cache embeddings: a call of 1 texts was charged to nobody" in caplog.text
