import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from routing.models import ModelKind, RoutingPolicy
from routing.services import tenant_model_access_set
from tests.factories import ModelFactory, TenantFactory, UserFactory


def test_granting_a_tenant_its_first_models_in_the_admin_makes_the_default_policy_live(client, db):
    tenant = TenantFactory(slug="newco")
    cheap = ModelFactory(name="newco-cheap", input_price_per_million=1, output_price_per_million=2)
    dear = ModelFactory(name="newco-dear", input_price_per_million=5, output_price_per_million=20)
    client.force_login(UserFactory(is_staff=True, is_superuser=True))

    response = client.post(
        reverse("admin:routing_tenantmodelaccess_add"),
        {"tenant": tenant.pk, "default_model": cheap.pk, "allowed_models": [cheap.pk, dear.pk]},
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    policy = RoutingPolicy.objects.unscoped().get(tenant=tenant)
    assert policy.live_version is not None
    aliases = policy.live_version.document["aliases"]
    assert aliases["auto"] == {"small": "newco-cheap", "large": "newco-dear"}


def test_an_embedding_model_is_neither_auto_s_small_model_nor_a_default(client, db):
    tenant = TenantFactory(slug="embedco")
    embedder = ModelFactory(
        name="embedco-embed", kind=ModelKind.EMBEDDING, input_price_per_million="0.02", output_price_per_million=0
    )
    chat = ModelFactory(name="embedco-chat", input_price_per_million=1, output_price_per_million=2)
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    url = reverse("admin:routing_tenantmodelaccess_add")

    refused = client.post(url, {"tenant": tenant.pk, "default_model": embedder.pk, "allowed_models": [embedder.pk]})
    granted = client.post(
        url, {"tenant": tenant.pk, "default_model": chat.pk, "allowed_models": [embedder.pk, chat.pk]}
    )

    assert refused.status_code == 200
    assert "Select a valid choice" in str(refused.context["adminform"].form.errors["default_model"])
    assert granted.status_code == 302
    aliases = RoutingPolicy.objects.unscoped().get(tenant=tenant).live_version.document["aliases"]
    assert aliases["auto"] == {"small": "embedco-chat", "large": "embedco-chat"}
    with pytest.raises(ValidationError, match="must be a chat model"):
        tenant_model_access_set(tenant=tenant, allowed_models=[embedder, chat], default_model=embedder)


def test_a_tenant_that_has_a_policy_keeps_it(client, db):
    tenant = TenantFactory(slug="oldco")
    model = ModelFactory(name="oldco-model")
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    url = reverse("admin:routing_tenantmodelaccess_add")
    client.post(url, {"tenant": tenant.pk, "default_model": model.pk, "allowed_models": [model.pk]})
    first_version = RoutingPolicy.objects.unscoped().get(tenant=tenant).live_version_id

    access = tenant.model_access
    client.post(
        reverse("admin:routing_tenantmodelaccess_change", args=[access.pk]),
        {"default_model": model.pk, "allowed_models": [model.pk]},
    )

    assert RoutingPolicy.objects.unscoped().get(tenant=tenant).live_version_id == first_version
