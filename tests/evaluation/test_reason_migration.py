"""The LLM judge's reason at rest: billing 0016 encrypts the reasons recorded in clear where they are, and the model
reads and writes it only through the encryption."""

from datetime import UTC, datetime

from billing.models import ShadowEvaluation
from tests.factories import TenantFactory

BEFORE = [("billing", "0016_evaluation_exhausted_until")]
AFTER = [("billing", "0017_shadow_evaluation_reason_sealed")]


def test_a_reason_in_clear_is_encrypted_and_still_reads_the_same(migrated):
    tenant = TenantFactory(slug="acme")
    Evaluation = migrated(BEFORE).get_model("billing", "ShadowEvaluation")
    row = {"tenant_id": tenant.pk, "lever": "routing", "served_model": "s", "reference_model": "l", "method": "llm"}
    judged = Evaluation.objects.create(
        request_id="req_llm",
        reason="It misses the refund amount of $42.",
        agrees=False,
        created_at=datetime.now(UTC),
        **row,
    )
    embedded = Evaluation.objects.create(request_id="req_emb", agrees=True, created_at=datetime.now(UTC), **row)

    Evaluation = migrated(AFTER).get_model("billing", "ShadowEvaluation")

    sealed = Evaluation.objects.get(pk=judged.pk).reason_encrypted
    assert sealed and "refund" not in sealed
    assert ShadowEvaluation.objects.for_tenant(tenant).get(pk=judged.pk).reason_text() == (
        "It misses the refund amount of $42."
    )
    assert ShadowEvaluation.objects.for_tenant(tenant).get(pk=embedded.pk).reason_text() == ""


def test_the_former_field_s_name_reads_and_writes_through_the_encryption(db):
    evaluation = ShadowEvaluation(reason="It quotes REFUND-42.")

    assert "REFUND" not in evaluation.reason_encrypted
    assert evaluation.reason == evaluation.reason_text() == "It quotes REFUND-42."
