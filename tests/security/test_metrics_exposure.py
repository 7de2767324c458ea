"""/metrics shows every tenant's traffic and cost: a bearer token or an explicit opt-in to public, and label values
only from the catalog, so one tenant's made-up model names cannot push the others' series into "other"."""

import httpx
import pytest

TOKEN = "scrape-secret-for-tests"


def scrape(client, **headers):
    return client.get("/metrics", **headers)


@pytest.mark.parametrize("authorization", [None, "Bearer ", "Bearer none", "Basic c2NyYXBlOg=="])
def test_without_a_configured_token_metrics_are_closed_to_everyone(client, settings, authorization):
    settings.LLMOPS_METRICS_TOKEN, settings.LLMOPS_METRICS_PUBLIC = "", False
    headers = {} if authorization is None else {"HTTP_AUTHORIZATION": authorization}

    response = scrape(client, **headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "metrics_token_required"
    assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong", f"Bearer {TOKEN}x", f"bearer {TOKEN}", TOKEN, "Bearer ünïcode"]
)
def test_a_wrong_or_missing_token_is_refused(client, settings, authorization):
    settings.LLMOPS_METRICS_TOKEN, settings.LLMOPS_METRICS_PUBLIC = TOKEN, False
    headers = {} if authorization is None else {"HTTP_AUTHORIZATION": authorization}
    assert scrape(client, **headers).status_code == 401


def test_the_token_or_the_public_setting_opens_metrics(client, settings):
    settings.LLMOPS_METRICS_TOKEN, settings.LLMOPS_METRICS_PUBLIC = TOKEN, False
    response = scrape(client, HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")

    settings.LLMOPS_METRICS_TOKEN, settings.LLMOPS_METRICS_PUBLIC = "", True
    assert scrape(client).status_code == 200


def test_made_up_model_names_never_become_label_values(gateway, acme, globex, settings):
    settings.LLMOPS_METRICS_TOKEN = TOKEN
    with httpx.Client(base_url=gateway.url, timeout=20) as http:
        # A handful shows it: each made-up name used to become a label until 50 filled the cap.
        for index in range(5):
            refused = http.post(
                "/v1/chat/completions",
                json={"model": f"made-up-{index}", "messages": [{"role": "user", "content": "hi"}]},
                headers={"authorization": f"Bearer {acme.key}"},
            )
            assert refused.status_code == 404
        served = http.post(
            "/v1/chat/completions",
            json={"model": globex.small.name, "messages": [{"role": "user", "content": "hi"}]},
            headers={"authorization": f"Bearer {globex.key}"},
        )
        assert served.status_code == 200
        text = http.get("/metrics", headers={"authorization": f"Bearer {TOKEN}"}).text

    assert "made-up" not in text
    assert 'model="other"' not in text
    assert f'model="{globex.small.name}",status_class="2xx"' in text
    assert 'model="unknown",status_class="4xx"' in text
