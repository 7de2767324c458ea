import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.urls import reverse

from llmops.client_ip import client_ip
from tests.factories import TenantFactory, UserFactory

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION_ENV = {
    "DEBUG": "false",
    "LLMOPS_HTTPS": "true",
    "LLMOPS_REQUIRE_SECRET_KEY": "true",
    "ALLOWED_HOSTS": "llmops.example.com",
}
INLINE_SCRIPT = re.compile(rb"<script(?![^>]*\bsrc=)(?![^>]*type=\"application/json\")[^>]*>", re.IGNORECASE)
INLINE_HANDLER = re.compile(rb"<[^>]+\son[a-z]+\s*=", re.IGNORECASE)
INLINE_STYLE = re.compile(rb"<[^>]+\sstyle\s*=|<style[\s>]", re.IGNORECASE)
# The policy of every admin page, the dashboard and the management API; the API docs' pages are looser.
PAGE_POLICY = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'", "data:"],
    "font-src": ["'self'"],
    "connect-src": ["'self'"],
    "object-src": ["'none'"],
    "base-uri": ["'self'"],
    "form-action": ["'self'"],
    "frame-ancestors": ["'none'"],
}
API_DOCS_POLICY = {
    "default-src": ["'self'"],
    "script-src": ["'self'", "'unsafe-inline'"],
    "style-src": ["'self'", "'unsafe-inline'"],
    "img-src": ["'self'", "data:"],
    "worker-src": ["'self'", "blob:"],
    "object-src": ["'none'"],
    "base-uri": ["'self'"],
    "frame-ancestors": ["'none'"],
}


def csp_directives(response) -> dict[str, list[str]]:
    """The Content-Security-Policy header as directive → sources (django-csp does not keep the directives' order)."""
    directives = [directive.split() for directive in response.headers["Content-Security-Policy"].split(";")]
    return {name: sources for name, *sources in directives}


def _production_check(*extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **PRODUCTION_ENV, "SECRET_KEY": secrets.token_urlsafe(60)}
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING", *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_with_production_settings():
    result = _production_check("--tag", "security")
    assert result.returncode == 0, result.stderr
    full = _production_check()
    assert "security." not in full.stderr + full.stdout


def test_the_demo_settings_would_fail_check_deploy():
    env = {k: v for k, v in os.environ.items() if k not in ("LLMOPS_HTTPS", "SECRET_KEY")}
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--tag", "security", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "security.W004" in result.stderr


@pytest.fixture
def superuser_client(client, db):
    TenantFactory(slug="acme")
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


@pytest.mark.parametrize(
    "url_name",
    [
        "admin:index",
        "admin:billing_usage_dashboard",
        "admin:billing_usage_statement",
        "admin:tenants_tenant_add",
        "admin:tenants_auditevent_changelist",
        "admin:routing_provider_add",
    ],
)
def test_pages_carry_the_security_headers_and_nothing_the_policy_would_block(superuser_client, url_name):
    response = superuser_client.get(reverse(url_name))
    assert response.status_code == 200
    assert csp_directives(response) == PAGE_POLICY
    assert response.headers["Permissions-Policy"] == "camera=(), microphone=(), geolocation=(), payment=()"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"
    body = response.content
    assert not INLINE_SCRIPT.search(body), INLINE_SCRIPT.search(body)
    assert not INLINE_HANDLER.search(body), INLINE_HANDLER.search(body)
    assert not INLINE_STYLE.search(body), INLINE_STYLE.search(body)


def test_the_dashboard_loads_its_scripts_from_our_own_static_files(superuser_client):
    body = superuser_client.get(reverse("admin:billing_usage_dashboard")).content.decode()
    sources = re.findall(r'<script[^>]*src="([^"]+)"', body)
    assert f"{settings.STATIC_URL}vendor/chartjs/chart.umd.min.js" in sources
    assert all(source.startswith("/") and not source.startswith("//") for source in sources)


@pytest.mark.parametrize("path", ["/api/schema/docs/", "/api/schema/redoc/"])
def test_the_api_docs_pages_alone_get_the_looser_policy_they_boot_with(superuser_client, path):
    assert csp_directives(superuser_client.get(path)) == API_DOCS_POLICY
    assert csp_directives(superuser_client.get("/api/schema/", {"format": "json"})) == PAGE_POLICY
    assert csp_directives(superuser_client.get("/api/usage/")) == PAGE_POLICY


@pytest.mark.django_db
def test_login_is_locked_after_repeated_failures_even_with_the_right_password(client):
    user = UserFactory(username="target", is_staff=True)
    user.set_password("the-right-password-123")
    user.save()
    login = reverse("admin:login")
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert client.post(login, {"username": "target", "password": "wrong"}).status_code == 200
    assert client.post(login, {"username": "target", "password": "wrong"}).status_code == 429
    locked = client.post(login, {"username": "target", "password": "the-right-password-123"})
    assert locked.status_code in (403, 429)
    assert "_auth_user_id" not in client.session


@pytest.mark.django_db
def test_a_successful_login_is_not_throttled(client):
    user = UserFactory(username="fine", is_staff=True)
    user.set_password("the-right-password-123")
    user.save()
    client.post(reverse("admin:login"), {"username": "fine", "password": "wrong"})
    response = client.post(reverse("admin:login"), {"username": "fine", "password": "the-right-password-123"})
    assert response.status_code == 302


def _live_login(gateway, username: str, password: str, *, forwarded_for: str) -> httpx.Response:
    """One admin login over real HTTP through uvicorn as production runs it, claiming an X-Forwarded-For."""
    with httpx.Client(base_url=gateway.url, timeout=15) as browser:
        browser.get("/admin/login/")
        form = {"username": username, "password": password, "csrfmiddlewaretoken": browser.cookies["csrftoken"]}
        return browser.post("/admin/login/", data=form, headers={"X-Forwarded-For": forwarded_for})


@pytest.fixture
def target(gateway, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # the throttle is under test
    user = UserFactory(username="target", is_staff=True)
    user.set_password("the-right-password-123")
    user.save()
    return user


def test_a_new_x_forwarded_for_with_each_wrong_password_still_locks_the_login(gateway, target, settings):
    settings.LLMOPS_TRUSTED_PROXY_COUNT = 0
    for attempt in range(settings.AXES_FAILURE_LIMIT):
        _live_login(gateway, "target", "wrong", forwarded_for=f"198.51.100.{attempt + 1}")
    locked = _live_login(gateway, "target", "the-right-password-123", forwarded_for="203.0.113.250")
    assert locked.status_code == 429


def test_behind_one_trusted_proxy_the_forwarded_client_is_the_one_locked_out(gateway, target, settings):
    settings.LLMOPS_TRUSTED_PROXY_COUNT = 1
    for _ in range(settings.AXES_FAILURE_LIMIT):
        _live_login(gateway, "target", "wrong", forwarded_for="forged, 203.0.113.7")
    assert _live_login(gateway, "target", "the-right-password-123", forwarded_for="203.0.113.7").status_code == 429
    other_client = _live_login(gateway, "target", "the-right-password-123", forwarded_for="198.51.100.9")
    assert other_client.status_code == 302


@pytest.mark.parametrize(
    ("proxies", "forwarded", "expected"),
    [
        (0, "203.0.113.7", "127.0.0.1"),
        (1, "forged, 203.0.113.7", "203.0.113.7"),
        (2, "forged, 203.0.113.7, 10.0.0.2", "203.0.113.7"),
        (2, "203.0.113.7", "127.0.0.1"),
        (1, "not-an-address", "127.0.0.1"),
        (1, "", "127.0.0.1"),
    ],
)
def test_client_ip_believes_x_forwarded_for_only_as_far_as_the_trusted_proxies(
    rf, settings, proxies, forwarded, expected
):
    settings.LLMOPS_TRUSTED_PROXY_COUNT = proxies
    request = rf.get("/admin/login/", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR=forwarded)
    assert client_ip(request) == expected


def test_production_runs_uvicorn_without_its_own_proxy_header_handling():
    """uvicorn would otherwise take X-Forwarded-For from any loopback peer as REMOTE_ADDR, before the app decides."""
    web = next(line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:"))
    assert "--no-proxy-headers" in web
