"""Quality SLOs: one alert per breach (concurrent checks included), sent through the tenant's active channels, the
enabled action applied to the routing policy and recorded in the audit log; holding again clears the breach."""

import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.utils import timezone

from billing.alerts.services import alert_message
from billing.models import AlertDelivery, Lever, QualityAction, QualityAlert, QualitySlo
from billing.quality.services import quality_slo_create, quality_slo_update, quality_slos_check, slo_rearm_at
from routing.models import RoutingPolicy, RoutingPolicyAudit
from routing.policy.drafts import policy_draft_replace
from routing.services import SHORT_TASKS_RULE, routing_policy_publish, routing_policy_rollback, tenant_model_access_set
from tenants.models import AuditEvent
from tests.quality.conftest import make_shop
from tests.quality.factories import evaluations


def live_document(tenant) -> dict:
    return RoutingPolicy.objects.for_tenant(tenant).select_related("live_version").get().live_version.document


def live_rule(tenant, name: str) -> dict:
    return next(rule for rule in live_document(tenant)["rules"] if rule["name"] == name)


def publish(shop, document: dict) -> None:
    """The document as the tenant's live policy and its draft, published by an admin."""
    policy = RoutingPolicy.objects.for_tenant(shop.tenant).get()
    policy_draft_replace(policy=policy, document=document)
    routing_policy_publish(policy=policy, actor=None)


def routing_slo(shop, **fields) -> QualitySlo:
    return quality_slo_create(
        tenant=shop.tenant,
        lever=Lever.ROUTING,
        rule=SHORT_TASKS_RULE,
        min_agreement=Decimal("0.95"),
        min_samples=30,
        **fields,
    )


def test_an_action_must_fit_the_lever_and_a_rule_must_be_in_the_live_policy(shop):
    with pytest.raises(ValidationError) as refused:
        quality_slo_create(tenant=shop.tenant, lever=Lever.SEMANTIC_CACHE, action=QualityAction.ROUTE_TO_LARGE)
    assert "acts on the routing to a cheaper model lever" in refused.value.message_dict["action"][0]
    with pytest.raises(ValidationError) as refused:
        quality_slo_create(tenant=shop.tenant, lever=Lever.ROUTING, rule="no-such-rule")
    assert "No rule 'no-such-rule' in the live routing policy" in refused.value.message_dict["rule"][0]
    with pytest.raises(ValidationError):
        quality_slo_create(tenant=shop.tenant, lever=Lever.BUDGET_DOWNGRADE, action=QualityAction.STOP_COMPRESSING)

    slo = quality_slo_create(tenant=shop.tenant, lever=Lever.COMPRESSION, action=QualityAction.STOP_COMPRESSING)
    with pytest.raises(ValidationError):
        quality_slo_update(slo=slo, action=QualityAction.DISABLE_SEMANTIC_CACHE)
    assert AuditEvent.objects.for_tenant(shop.tenant).filter(object_type="billing.qualityslo").count() == 1


def test_a_breach_alerts_once_through_active_channels_and_moves_the_rule_to_the_large_model(
    shop, eager_celery, mailoutbox, django_capture_on_commit_callbacks
):
    other = make_shop("other")
    slo = routing_slo(shop, action=QualityAction.ROUTE_TO_LARGE)
    evaluations(shop.tenant, agreeing=40, disagreeing=10, rule=SHORT_TASKS_RULE)  # 80%, interval 67-89%: under 95%

    with django_capture_on_commit_callbacks(execute=True):
        [alert] = quality_slos_check(tenant_id=shop.tenant.pk, lever=Lever.ROUTING)
        again = quality_slos_check(tenant_id=shop.tenant.pk, lever=Lever.ROUTING)

    assert again == []
    assert (alert.samples, alert.agreement, alert.lower_bound, alert.upper_bound) == (
        50,
        Decimal("0.8000"),
        Decimal("0.6696"),
        Decimal("0.8876"),
    )
    slo.refresh_from_db()
    assert slo.breached_at is not None
    assert alert.action_taken == QualityAction.ROUTE_TO_LARGE
    assert alert.action_detail == (
        f"Published routing policy version 2: rule {SHORT_TASKS_RULE}: target shop-small -> shop-large."
    )
    assert live_rule(shop.tenant, SHORT_TASKS_RULE)["outcome"]["target_model"] == "shop-large"
    audit = RoutingPolicyAudit.objects.for_tenant(shop.tenant).get(version__number=2)
    assert audit.actor is None
    assert audit.note.startswith(f"quality SLO {slo.pk} (routing, rule {SHORT_TASKS_RULE}, min 0.9500) breached")
    names = set(AuditEvent.objects.for_tenant(shop.tenant).values_list("object_type", "actor_name"))
    assert ("billing.qualityslo", f"quality SLO {slo.pk} (routing, rule {SHORT_TASKS_RULE}, min 0.9500)") in names
    assert (
        "routing.routingpolicyversion",
        f"quality SLO {slo.pk} (routing, rule {SHORT_TASKS_RULE}, min 0.9500)",
    ) in names
    [delivery] = AlertDelivery.objects.for_tenant(shop.tenant)
    assert (delivery.channel, delivery.status) == (shop.on_call, "sent")
    [mail] = mailoutbox
    assert mail.to == ["oncall@shop.test"]
    assert mail.subject == f"[llmops] shop: routing to a cheaper model (rule {SHORT_TASKS_RULE}) agreement below 95%"
    assert "80% of 50 answers agreed with their reference (95% interval 66.96% to 88.76%)" in mail.body
    assert "Published routing policy version 2" in mail.body
    assert not AlertDelivery.objects.for_tenant(other.tenant).exists()


def test_the_alert_payload_is_typed_and_names_the_slo(shop, django_capture_on_commit_callbacks):
    slo = routing_slo(shop)
    evaluations(shop.tenant, agreeing=20, disagreeing=20, rule=f"{SHORT_TASKS_RULE}+budget-downgrade")

    with django_capture_on_commit_callbacks(execute=False):
        [alert] = quality_slos_check(tenant_id=shop.tenant.pk, lever=Lever.ROUTING)
    subject, text, payload = alert_message(delivery=AlertDelivery.objects.for_tenant(shop.tenant).get())

    assert subject == f"[llmops] shop: routing to a cheaper model (rule {SHORT_TASKS_RULE}) agreement below 95%"
    assert "Alert only: no automatic action is enabled." in text
    assert payload == {
        "type": "quality.slo_breached",
        "alert_id": alert.pk,
        "tenant": "shop",
        "slo": {
            "id": slo.pk,
            "lever": "routing",
            "rule": SHORT_TASKS_RULE,
            "min_agreement": "0.9500",
            "min_samples": 30,
            "window_days": 7,
            "action": "none",
        },
        "samples": 40,
        "agreement": "0.5000",
        "lower_bound": "0.3519",
        "upper_bound": "0.6481",
        "action_taken": "none",
        "action_detail": "",
        "created_at": alert.created_at.isoformat(),
    }
    assert live_rule(shop.tenant, SHORT_TASKS_RULE)["outcome"]["target_model"] == "shop-small"


@pytest.mark.parametrize(
    ("agreeing", "disagreeing"),
    [(20, 9), (100, 0), (294, 6)],  # too few samples; all agree; 98% with the lower bound over 95%
)
def test_no_alert_without_enough_samples_or_while_the_lower_bound_holds(shop, agreeing, disagreeing):
    routing_slo(shop, action=QualityAction.ROUTE_TO_LARGE)
    evaluations(shop.tenant, agreeing=agreeing, disagreeing=disagreeing, rule=SHORT_TASKS_RULE)

    assert quality_slos_check(tenant_id=shop.tenant.pk, lever=Lever.ROUTING) == []
    assert live_rule(shop.tenant, SHORT_TASKS_RULE)["outcome"]["target_model"] == "shop-small"


@pytest.mark.parametrize(
    ("agreeing", "disagreeing", "breached"),
    [
        (30, 0, False),  # a perfect record's lower bound (88.6%) is under 95%: not enough to tell
        (72, 0, False),  # still under: a perfect record clears 95% from 73 evaluations
        (38, 2, False),  # 95% observed on 40
        (37, 3, True),  # 92.5% observed on 40
        (0, 50, True),
        (138, 8, True),  # 94.5% observed, enough evaluations for the lower bound alone to decide
    ],
)
def test_a_never_wrong_lever_does_not_breach_on_a_few_evaluations(shop, agreeing, disagreeing, breached):
    routing_slo(shop)
    evaluations(shop.tenant, agreeing=agreeing, disagreeing=disagreeing, rule=SHORT_TASKS_RULE)

    assert bool(quality_slos_check(tenant_id=shop.tenant.pk, lever=Lever.ROUTING)) is breached


def test_a_minimum_of_one_is_refused(shop):
    with pytest.raises(ValidationError, match="below 1"):
        quality_slo_create(tenant=shop.tenant, lever=Lever.ROUTING, rule=SHORT_TASKS_RULE, min_agreement=Decimal(1))


def test_only_the_window_the_lever_and_the_rule_count(shop):
    routing_slo(shop, window_days=7)
    long_ago = timezone.now() - timedelta(days=8)
    evaluations(shop.tenant, agreeing=0, disagreeing=50, rule=SHORT_TASKS_RULE, at=long_ago)
    evaluations(shop.tenant, agreeing=0, disagreeing=50, rule="enterprise-tier")
    evaluations(shop.tenant, agreeing=0, disagreeing=50, rule=SHORT_TASKS_RULE, lever=Lever.SEMANTIC_CACHE)
    evaluations(make_shop("other").tenant, agreeing=0, disagreeing=50, rule=SHORT_TASKS_RULE)

    assert quality_slos_check(tenant_id=shop.tenant.pk, lever=Lever.ROUTING) == []
    assert quality_slos_check(tenant_id=shop.tenant.pk, lever=Lever.SEMANTIC_CACHE) == []


def test_a_lever_wide_slo_and_a_rules_slo_each_alert_once(shop):
    routing_slo(shop)
    quality_slo_create(tenant=shop.tenant, lever=Lever.ROUTING, min_agreement=Decimal("0.9"), min_samples=10)
    evaluations(shop.tenant, agreeing=30, disagreeing=20, rule=SHORT_TASKS_RULE)

    alerts = quality_slos_check(tenant_id=shop.tenant.pk, lever=Lever.ROUTING)

    assert sorted(alert.slo.rule for alert in alerts) == ["", SHORT_TASKS_RULE]


def test_holding_again_clears_the_breach_and_a_later_breach_alerts_again(shop):
    slo = routing_slo(shop)
    evaluations(shop.tenant, agreeing=25, disagreeing=5, rule=SHORT_TASKS_RULE)
    assert len(quality_slos_check(tenant_id=shop.tenant.pk, lever=Lever.ROUTING)) == 1

    evaluations(shop.tenant, agreeing=800, disagreeing=0, rule=SHORT_TASKS_RULE)
    assert quality_slos_check(tenant_id=shop.tenant.pk, lever=Lever.ROUTING) == []
    slo.refresh_from_db()
    assert slo.breached_at is None

    evaluations(shop.tenant, agreeing=0, disagreeing=200, rule=SHORT_TASKS_RULE)
    assert len(quality_slos_check(tenant_id=shop.tenant.pk, lever=Lever.ROUTING)) == 1
    assert QualityAlert.objects.for_tenant(shop.tenant).count() == 2


def test_an_inactive_slo_is_not_checked(shop):
    routing_slo(shop, is_active=False)
    evaluations(shop.tenant, agreeing=0, disagreeing=50, rule=SHORT_TASKS_RULE)

    assert quality_slos_check(tenant_id=shop.tenant.pk, lever=Lever.ROUTING) == []


def test_an_action_that_cannot_be_published_still_alerts_and_says_why(shop):
    quality_slo_create(tenant=shop.tenant, lever=Lever.ROUTING, rule="", action=QualityAction.ROUTE_TO_LARGE)
    tenant_model_access_set(tenant=shop.tenant, allowed_models=[shop.small], default_model=shop.small)
    evaluations(shop.tenant, agreeing=0, disagreeing=50)

    [alert] = quality_slos_check(tenant_id=shop.tenant.pk, lever=Lever.ROUTING)

    assert alert.action_taken == QualityAction.NONE
    assert alert.action_detail.startswith("Not done: the changed policy could not be published: ")
    assert "shop-large" in alert.action_detail
    assert live_document(shop.tenant)["auto_threshold"] == 50


@pytest.mark.parametrize(
    ("lever", "action", "changed"),
    [
        (Lever.SEMANTIC_CACHE, QualityAction.DISABLE_SEMANTIC_CACHE, ("semantic_cache", True, False)),
        (Lever.COMPRESSION, QualityAction.STOP_COMPRESSING, ("over_cap_action", "compress", "reject")),
    ],
)
def test_the_cache_and_compression_actions_change_the_rule(shop, lever, action, changed):
    quality_slo_create(tenant=shop.tenant, lever=lever, rule=SHORT_TASKS_RULE, action=action, min_samples=10)
    field, before, after = changed
    assert live_rule(shop.tenant, SHORT_TASKS_RULE)["outcome"][field] == before
    evaluations(shop.tenant, agreeing=5, disagreeing=5, lever=lever, rule=SHORT_TASKS_RULE)

    [alert] = quality_slos_check(tenant_id=shop.tenant.pk, lever=lever)

    assert alert.action_taken == action
    assert live_rule(shop.tenant, SHORT_TASKS_RULE)["outcome"][field] == after
    assert live_rule(shop.tenant, "enterprise-tier")["outcome"][field] == before


@pytest.mark.django_db(transaction=True)
def test_concurrent_checks_raise_one_alert_and_one_policy_version():
    shop = make_shop("racing")
    routing_slo(shop, action=QualityAction.ROUTE_TO_LARGE)
    evaluations(shop.tenant, agreeing=10, disagreeing=40, rule=SHORT_TASKS_RULE)
    start, raised, errors = threading.Barrier(6), [], []

    def check():
        try:
            start.wait()
            raised.extend(quality_slos_check(tenant_id=shop.tenant.pk, lever=Lever.ROUTING))
        except Exception as error:  # reaches the assert below instead of dying with the thread
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=check) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(raised) == 1
    assert QualityAlert.objects.for_tenant(shop.tenant).count() == 1
    assert RoutingPolicyAudit.objects.for_tenant(shop.tenant).count() == 2  # the default, and the action's
    assert AlertDelivery.objects.for_tenant(shop.tenant).count() == 1


def test_changing_an_slos_terms_or_switching_it_off_clears_its_breach(shop):
    slo = routing_slo(shop)
    evaluations(shop.tenant, agreeing=20, disagreeing=20, rule=SHORT_TASKS_RULE)
    assert len(quality_slos_check(tenant_id=shop.tenant.pk, lever=Lever.ROUTING)) == 1

    quality_slo_update(slo=slo, action=QualityAction.ROUTE_TO_LARGE)
    slo.refresh_from_db()
    assert slo.breached_at is not None  # the action is no term: the breach stands

    quality_slo_update(slo=slo, is_active=False)
    quality_slo_update(slo=slo, is_active=True)
    slo.refresh_from_db()
    assert slo.breached_at is None
    assert len(quality_slos_check(tenant_id=shop.tenant.pk, lever=Lever.ROUTING)) == 1  # judged afresh

    quality_slo_update(slo=slo, min_agreement=Decimal("0.3"))  # under the lower bound, 0.35
    slo.refresh_from_db()
    assert slo.breached_at is None
    assert quality_slos_check(tenant_id=shop.tenant.pk, lever=Lever.ROUTING) == []


def test_a_breach_on_a_rule_that_downgrades_a_named_model_gives_requests_back_their_model(shop):
    publish(
        shop,
        {
            "aliases": {"auto": {"small": "shop-small", "large": "shop-large"}},
            "rules": [
                {
                    "priority": 10,
                    "name": "cheaper-large",
                    "match": {"requested_models": ["shop-large"]},
                    "outcome": {"target_model": "shop-small"},
                }
            ],
        },
    )
    quality_slo_create(
        tenant=shop.tenant,
        lever=Lever.ROUTING,
        rule="cheaper-large",
        action=QualityAction.ROUTE_TO_LARGE,
        min_samples=10,
    )
    evaluations(
        shop.tenant,
        agreeing=5,
        disagreeing=5,
        rule="cheaper-large",
        served_model="shop-small",
        reference_model="shop-large",
    )

    [alert] = quality_slos_check(tenant_id=shop.tenant.pk, lever=Lever.ROUTING)

    assert alert.action_taken == QualityAction.ROUTE_TO_LARGE
    assert live_rule(shop.tenant, "cheaper-large")["outcome"]["target_model"] == ""
    assert alert.action_detail.startswith(
        "Published routing policy version 3: rule cheaper-large: target shop-small dropped"
    )


def test_a_breach_the_action_cannot_mend_alone_says_so_and_publishes_nothing(shop):
    # The default template's catch-all lets the score pick for an alias's requests and keeps a named model: no one
    # target fits, and its threshold would move every rule's scored requests.
    quality_slo_create(
        tenant=shop.tenant, lever=Lever.ROUTING, rule="prompt-cap", action=QualityAction.ROUTE_TO_LARGE, min_samples=10
    )
    evaluations(shop.tenant, agreeing=5, disagreeing=5, rule="prompt-cap+score", reference_model="shop-large")

    [alert] = quality_slos_check(tenant_id=shop.tenant.pk, lever=Lever.ROUTING)

    assert alert.action_taken == QualityAction.NONE
    assert alert.action_detail.startswith(
        "Nothing changed: rule prompt-cap: the difficulty score picks for its requests"
    )
    assert "Give the alias a rule of its own, or watch the whole lever." in alert.action_detail
    assert live_document(shop.tenant)["auto_threshold"] == 50
    assert RoutingPolicyAudit.objects.for_tenant(shop.tenant).count() == 1


def test_a_catch_all_with_a_target_goes_to_the_model_its_window_evaluations_were_judged_against(shop):
    publish(
        shop,
        {
            "aliases": {"auto": {"small": "shop-small", "large": "shop-large"}},
            "rules": [{"priority": 10, "name": "everything", "outcome": {"target_model": "shop-small"}}],
        },
    )
    quality_slo_create(
        tenant=shop.tenant, lever=Lever.ROUTING, rule="everything", action=QualityAction.ROUTE_TO_LARGE, min_samples=10
    )
    evaluations(shop.tenant, agreeing=5, disagreeing=5, rule="everything", reference_model="shop-large")
    # Judged against another model before the window: not evidence about the rule now.
    evaluations(
        shop.tenant,
        agreeing=1,
        disagreeing=0,
        rule="everything",
        reference_model="gone",
        at=timezone.now() - timedelta(days=30),
    )

    [alert] = quality_slos_check(tenant_id=shop.tenant.pk, lever=Lever.ROUTING)

    assert live_rule(shop.tenant, "everything")["outcome"]["target_model"] == "shop-large"
    assert alert.action_detail == (
        "Published routing policy version 3: rule everything: target shop-small -> shop-large (the model its "
        "evaluations were judged against)."
    )


def test_an_slo_whose_rule_left_the_live_policy_can_still_be_edited_and_switched_off(shop):
    slo = routing_slo(shop)
    publish(shop, {"aliases": {"auto": {"small": "shop-small", "large": "shop-large"}}, "rules": []})

    quality_slo_update(slo=slo, min_agreement=Decimal("0.9"))
    quality_slo_update(slo=slo, is_active=False)

    slo.refresh_from_db()
    assert (slo.rule, slo.min_agreement, slo.is_active) == (SHORT_TASKS_RULE, Decimal("0.9"), False)
    with pytest.raises(ValidationError) as refused:
        quality_slo_update(slo=slo, rule="another-gone-rule")
    assert "No rule 'another-gone-rule'" in refused.value.message_dict["rule"][0]


def test_a_breach_clears_only_a_margin_over_the_minimum(shop):
    slo = routing_slo(shop)  # min 0.95: clears at a lower bound of 0.96
    evaluations(shop.tenant, agreeing=20, disagreeing=20, rule=SHORT_TASKS_RULE)
    assert len(quality_slos_check(tenant_id=shop.tenant.pk, lever=Lever.ROUTING)) == 1

    evaluations(shop.tenant, agreeing=600, disagreeing=0, rule=SHORT_TASKS_RULE)  # lower bound 0.9512
    assert quality_slos_check(tenant_id=shop.tenant.pk, lever=Lever.ROUTING) == []
    slo.refresh_from_db()
    assert slo.breached_at is not None

    evaluations(shop.tenant, agreeing=200, disagreeing=0, rule=SHORT_TASKS_RULE)  # 0.9620
    assert quality_slos_check(tenant_id=shop.tenant.pk, lever=Lever.ROUTING) == []
    slo.refresh_from_db()
    assert slo.breached_at is None
    assert slo_rearm_at(slo) == Decimal("0.9600")
    assert slo_rearm_at(QualitySlo(min_agreement=Decimal("0.9950"))) == Decimal("0.99750")


def test_a_version_that_undoes_the_action_clears_the_breach_and_the_next_check_alerts_and_acts_again(shop):
    slo = routing_slo(shop, action=QualityAction.ROUTE_TO_LARGE)
    evaluations(shop.tenant, agreeing=20, disagreeing=20, rule=SHORT_TASKS_RULE)
    assert len(quality_slos_check(tenant_id=shop.tenant.pk, lever=Lever.ROUTING)) == 1
    policy = RoutingPolicy.objects.for_tenant(shop.tenant).get()
    routing_policy_rollback(policy=policy, version=policy.versions.get(number=1), actor=None)
    assert live_rule(shop.tenant, SHORT_TASKS_RULE)["outcome"]["target_model"] == "shop-small"

    # Back on the small model, the rule is evaluated again, and still disagrees.
    evaluations(shop.tenant, agreeing=0, disagreeing=1, rule=SHORT_TASKS_RULE)
    [again] = quality_slos_check(tenant_id=shop.tenant.pk, lever=Lever.ROUTING)

    assert again.action_taken == QualityAction.ROUTE_TO_LARGE
    assert again.action_detail.startswith("Published routing policy version 4: ")
    assert live_rule(shop.tenant, SHORT_TASKS_RULE)["outcome"]["target_model"] == "shop-large"
    slo.refresh_from_db()
    assert slo.breached_at is not None
    assert quality_slos_check(tenant_id=shop.tenant.pk, lever=Lever.ROUTING) == []


def test_an_action_that_did_not_run_does_not_clear_the_breach_at_each_check(shop):
    routing_slo(shop, action=QualityAction.ROUTE_TO_LARGE)
    tenant_model_access_set(tenant=shop.tenant, allowed_models=[shop.small], default_model=shop.small)
    evaluations(shop.tenant, agreeing=0, disagreeing=50, rule=SHORT_TASKS_RULE)
    [alert] = quality_slos_check(tenant_id=shop.tenant.pk, lever=Lever.ROUTING)
    assert alert.action_taken == QualityAction.NONE  # refused: the large model is not allowed

    assert quality_slos_check(tenant_id=shop.tenant.pk, lever=Lever.ROUTING) == []
    assert QualityAlert.objects.for_tenant(shop.tenant).count() == 1
