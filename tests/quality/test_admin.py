"""The quality admin pages: SLOs created through the service with its refusals as form errors, the judge's reason
shown only to those who may read the tenant's answers."""

from billing.models import Lever, QualitySlo
from billing.quality.services import quality_slo_create
from routing.models import RoutingPolicy
from routing.policy.drafts import policy_draft_replace
from routing.services import SHORT_TASKS_RULE, routing_policy_publish
from tenants.models import Role
from tenants.services import membership_set
from tests.admin.scenario import admin_url, make_user
from tests.factories import TenantFactory
from tests.quality.factories import ShadowEvaluationFactory, evaluations

SLO_FORM = {"min_agreement": "0.95", "min_samples": "30", "window_days": "7", "is_active": "on"}


def test_an_slo_is_added_for_a_live_rule_and_its_agreement_shown(client, shop):
    client.force_login(make_user(Role.ADMIN, tenant=shop.tenant))
    evaluations(shop.tenant, agreeing=19, disagreeing=1, rule=SHORT_TASKS_RULE)

    response = client.post(
        admin_url("billing_qualityslo", "add"),
        {
            **SLO_FORM,
            "tenant": shop.tenant.pk,
            "lever": "routing",
            "rule": SHORT_TASKS_RULE,
            "action": "route_to_large",
        },
    )

    assert response.status_code == 302
    slo = QualitySlo.objects.for_tenant(shop.tenant).get()
    page = client.get(admin_url("billing_qualityslo", "change", slo.pk)).content.decode()
    assert "95.0% (76.3–99.2%, n=20)" in page
    assert "enterprise-tier" in page  # the live policy's rules, to pick from


def test_an_slo_whose_rule_left_the_live_policy_is_switched_off_in_the_admin(client, shop):
    slo = quality_slo_create(tenant=shop.tenant, lever=Lever.ROUTING, rule=SHORT_TASKS_RULE)
    policy = RoutingPolicy.objects.for_tenant(shop.tenant).get()
    policy_draft_replace(policy=policy, document={"aliases": {}, "rules": []})
    routing_policy_publish(policy=policy, actor=None)
    client.force_login(make_user(Role.ADMIN, tenant=shop.tenant))

    response = client.post(
        admin_url("billing_qualityslo", "change", slo.pk),
        {**SLO_FORM, "lever": "routing", "rule": SHORT_TASKS_RULE, "action": "none", "is_active": ""},
    )

    assert response.status_code == 302
    slo.refresh_from_db()
    assert not slo.is_active


def test_refusals_are_form_errors(client, shop):
    client.force_login(make_user(Role.OWNER, tenant=shop.tenant))

    wrong_lever = client.post(
        admin_url("billing_qualityslo", "add"),
        {**SLO_FORM, "tenant": shop.tenant.pk, "lever": "compression", "rule": "", "action": "route_to_large"},
    )
    unknown_rule = client.post(
        admin_url("billing_qualityslo", "add"),
        {**SLO_FORM, "tenant": shop.tenant.pk, "lever": "routing", "rule": "gone", "action": "none"},
    )

    assert wrong_lever.status_code == unknown_rule.status_code == 200
    assert "acts on the routing to a cheaper model lever" in wrong_lever.content.decode()
    assert "No rule &#x27;gone&#x27; in the live routing policy" in unknown_rule.content.decode()
    assert not QualitySlo.objects.for_tenant(shop.tenant).exists()


def test_a_minimum_of_1_and_a_second_slo_for_the_same_lever_and_rule_are_form_errors(client, shop):
    """Both were refused only by the service when the admin saved: answered 500 instead of a form error."""
    client.force_login(make_user(Role.OWNER, tenant=shop.tenant))
    quality_slo_create(tenant=shop.tenant, lever=Lever.ROUTING, rule=SHORT_TASKS_RULE)
    other = quality_slo_create(tenant=shop.tenant, lever=Lever.COMPRESSION)

    perfect = client.post(
        admin_url("billing_qualityslo", "add"),
        {**SLO_FORM, "min_agreement": "1", "tenant": shop.tenant.pk, "lever": "routing", "rule": "", "action": "none"},
    )
    same_as_another = client.post(
        admin_url("billing_qualityslo", "change", other.pk),
        {**SLO_FORM, "lever": "routing", "rule": SHORT_TASKS_RULE, "action": "none"},
    )

    assert perfect.status_code == same_as_another.status_code == 200
    assert "The minimum agreement must be below 1" in perfect.content.decode()
    assert "already exists" in same_as_another.content.decode()
    other.refresh_from_db()
    assert other.lever == Lever.COMPRESSION
    assert QualitySlo.objects.for_tenant(shop.tenant).count() == 2


def test_the_judges_reason_is_for_owners_and_admins_only(client, shop):
    evaluation = ShadowEvaluationFactory(tenant=shop.tenant, lever=Lever.SEMANTIC_CACHE, reason="both say REFUND-42")

    client.force_login(make_user(Role.VIEWER, tenant=shop.tenant))
    as_viewer = client.get(admin_url("billing_shadowevaluation", "change", evaluation.pk)).content.decode()
    client.force_login(make_user(Role.OWNER, tenant=shop.tenant))
    as_owner = client.get(admin_url("billing_shadowevaluation", "change", evaluation.pk)).content.decode()

    assert "REFUND-42" not in as_viewer and evaluation.request_id in as_viewer
    assert "REFUND-42" in as_owner


def test_shadow_evaluations_filter_by_lever_and_agreement(client, shop):
    ShadowEvaluationFactory(tenant=shop.tenant, lever=Lever.ROUTING, agrees=False, request_id="routing-differs")
    ShadowEvaluationFactory(tenant=shop.tenant, lever=Lever.ROUTING, agrees=True, request_id="routing-agrees")
    ShadowEvaluationFactory(tenant=shop.tenant, lever=Lever.COMPRESSION, agrees=False, request_id="compressed")
    client.force_login(make_user(Role.VIEWER, tenant=shop.tenant))

    page = client.get(admin_url("billing_shadowevaluation", "changelist"), {"lever": "routing", "agrees__exact": "0"})

    html = page.content.decode()
    assert "routing-differs" in html
    assert "routing-agrees" not in html and "compressed" not in html


def test_a_viewer_cannot_filter_or_search_by_the_judges_reason(client, shop):
    ShadowEvaluationFactory(tenant=shop.tenant, reason="both say REFUND-42", request_id="probed")
    client.force_login(make_user(Role.VIEWER, tenant=shop.tenant))
    changelist = admin_url("billing_shadowevaluation", "changelist")

    hit = client.get(changelist, {"reason__icontains": "REFUND-42"})
    miss = client.get(changelist, {"reason__icontains": "REFUND-43"})
    # Sealed, the reason still has a length, which its ciphertext's tells.
    long = client.get(changelist, {"reason_encrypted__regex": "^.{100,}$"})
    searched = client.get(changelist, {"q": "REFUND-42"})

    # Refused whatever the fragment: the answer says nothing about the reason.
    assert hit.status_code == miss.status_code == long.status_code == 400
    assert "probed" not in searched.content.decode()


def test_an_owner_elsewhere_who_only_views_this_tenant_cannot_filter_by_its_reasons(client, shop):
    ShadowEvaluationFactory(tenant=shop.tenant, reason="both say REFUND-42", request_id="probed")
    user = make_user(Role.VIEWER, tenant=shop.tenant)
    membership_set(tenant=TenantFactory(slug="own-shop"), user=user, role=Role.OWNER)
    client.force_login(user)

    page = client.get(admin_url("billing_shadowevaluation", "changelist"), {"reason__icontains": "REFUND-42"})

    assert page.status_code == 400
