"""Settings for llmops, all read from the environment (django-environ).

The defaults are the embedded demo: SQLite, no Redis, Celery eager. Production sets
DATABASE_URL, REDIS_URL, CELERY_BROKER_URL, SECRET_KEY and LLMOPS_ENCRYPTION_KEY.
"""

from pathlib import Path

import environ
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env")

DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG and env.bool("LLMOPS_REQUIRE_SECRET_KEY", default=False):
        raise ImproperlyConfigured("SECRET_KEY must be set in production")
    SECRET_KEY = "insecure-embedded-demo-key-do-not-use-in-production"
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "tenants",
    "routing",
    "billing",
    "llmops.gateway",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "llmops.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

ASGI_APPLICATION = "llmops.asgi.application"

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'var' / 'db.sqlite3'}")}
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DB_CONN_MAX_AGE", default=60))
if (
    DEBUG
    and "sqlite" not in DATABASES["default"]["ENGINE"]
    and not env.bool("ALLOW_DEBUG_WITH_PRODUCTION_DB", default=False)
):
    raise ImproperlyConfigured(
        "DEBUG=True with a non-SQLite database; set ALLOW_DEBUG_WITH_PRODUCTION_DB=true to allow it"
    )

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env.path("STATIC_ROOT", default=BASE_DIR / "var" / "static")
# The embedded demo serves static files from the ASGI app; production puts a CDN or proxy in front.
SERVE_STATIC = env.bool("SERVE_STATIC", default=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
# Async CSV exports are written here (default storage); production may point STORAGES at S3 instead.
MEDIA_ROOT = env.path("MEDIA_ROOT", default=BASE_DIR / "var" / "media")
# Exports longer than this many days go through the async export instead of streaming.
LLMOPS_EXPORT_SYNC_MAX_DAYS = env.int("LLMOPS_EXPORT_SYNC_MAX_DAYS", default=62)
# Monthly statements are pushed to this S3 bucket when set (boto3's usual AWS credentials).
LLMOPS_STATEMENTS_BUCKET = env("LLMOPS_STATEMENTS_BUCKET", default="")
# Dotted path of a callable(*, tenant, since, until) -> iterable of billing.dashboard.BudgetUsage; blank: no budgets.
LLMOPS_BUDGET_USAGE_SELECTOR = env("LLMOPS_BUDGET_USAGE_SELECTOR", default="")
# /metrics: a bearer token, when set, is required to scrape.
LLMOPS_METRICS_TOKEN = env("LLMOPS_METRICS_TOKEN", default="")

REDIS_URL = env("REDIS_URL", default="")

CELERY_BROKER_URL = env("CELERY_BROKER_URL", default=REDIS_URL or "memory://")
CELERY_RESULT_BACKEND = env("CELERY_RESULT_BACKEND", default=None)
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=CELERY_BROKER_URL == "memory://")
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# Periodic tasks, by name. Each app's issue adds its own entries here.
CELERY_BEAT_SCHEDULE: dict[str, dict] = {
    "billing-anomalies-detect": {"task": "billing.tasks.anomalies_detect", "schedule": crontab(minute=5)},
    "billing-budget-counters-check": {
        "task": "billing.tasks.budget_counters_check",
        "schedule": crontab(hour=3, minute=15),
    },
    "billing-usage-rollups-refresh": {"task": "billing.tasks_finance.usage_rollups_refresh_task", "schedule": 60.0},
    "billing-usage-rollups-rebuild-recent": {
        "task": "billing.tasks_finance.usage_rollups_rebuild_recent_task",
        "schedule": crontab(hour=2, minute=30),
    },
    "billing-statements-push": {
        "task": "billing.tasks_finance.statements_push_task",
        "schedule": crontab(day_of_month=1, hour=4, minute=0),
    },
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "llmops management API",
    "VERSION": "0.1.0",
    # Swagger UI and Redoc are served from drf-spectacular-sidecar's static files, never a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# Key for provider credentials encrypted at rest (Fernet, urlsafe base64 of 32 bytes).
# Without one the embedded demo derives a key from SECRET_KEY.
LLMOPS_ENCRYPTION_KEY = env("LLMOPS_ENCRYPTION_KEY", default="")

# Gateway limits.
LLMOPS_MAX_BODY_BYTES = env.int("LLMOPS_MAX_BODY_BYTES", default=8 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = LLMOPS_MAX_BODY_BYTES
# How often a process checks whether its configuration snapshot (keys, models, prices) is stale.
LLMOPS_SNAPSHOT_CHECK_SECONDS = env.float("LLMOPS_SNAPSHOT_CHECK_SECONDS", default=1.0)
# Budgets when REDIS_URL is set but Redis cannot be reached: "fail_closed" refuses requests under a block or
# downgrade budget (503 budget_unavailable); "database" counts in BudgetCounter rows instead. Never open.
# The answer cap set on a request under a budget that sent none, so its reservation is a true worst case.
LLMOPS_RESERVATION_MAX_TOKENS = env.int("LLMOPS_RESERVATION_MAX_TOKENS", default=4096)
LLMOPS_BUDGET_REDIS_FAILURE = env.str("LLMOPS_BUDGET_REDIS_FAILURE", default="fail_closed")
if LLMOPS_BUDGET_REDIS_FAILURE not in ("fail_closed", "database"):
    raise ImproperlyConfigured("LLMOPS_BUDGET_REDIS_FAILURE must be 'fail_closed' or 'database'")
# Anomaly detection: a window is flagged when it lies this many robust deviations from its 14-day baseline,
# judged only where baseline windows and the window itself saw at least the minimum number of requests.
LLMOPS_ANOMALY_MIN_SCORE = env.float("LLMOPS_ANOMALY_MIN_SCORE", default=5.0)
LLMOPS_ANOMALY_MIN_REQUESTS = env.int("LLMOPS_ANOMALY_MIN_REQUESTS", default=20)

# Alert email, e.g. EMAIL_URL=smtp+tls://user:password@smtp.example.com:587; the demo prints mail to the console.
vars().update(env.email_url("EMAIL_URL", default="consolemail://"))
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="llmops@localhost")
LLMOPS_UPSTREAM_MAX_CONNECTIONS = env.int("LLMOPS_UPSTREAM_MAX_CONNECTIONS", default=512)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
}
