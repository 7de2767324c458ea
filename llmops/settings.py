"""Settings for llmops, all read from the environment (django-environ).

The defaults are the embedded demo: SQLite, no Redis, Celery eager. Production sets
DATABASE_URL, REDIS_URL, CELERY_BROKER_URL, SECRET_KEY and LLMOPS_ENCRYPTION_KEY.
"""

from datetime import timedelta
from pathlib import Path

import environ
from celery.schedules import crontab
from csp.constants import NONE, SELF, UNSAFE_INLINE
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
    "axes",
    "csp",
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
    # First, so that it sees every error answer under /api/ and makes it JSON.
    "llmops.middleware.ApiJsonErrorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "llmops.middleware.PermissionsPolicyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "llmops.middleware.AuditActorMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into its lockout answer.
    "axes.middleware.AxesMiddleware",
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
# No persistent connections: under ASGI Django runs each admin and /api request on a thread of its own, and a
# connection kept past its request stayed open with its dead thread (a sweep of the admin reached Postgres's limit).
# Postgres connections come from a pool per process instead (psycopg_pool): a request borrows one and gives it back
# when it ends, so a process never holds more than DB_POOL_MAX_SIZE; a borrower waits up to DB_POOL_TIMEOUT seconds
# for one (short: a pool that cannot reach Postgres makes borrowers wait that long, and a Postgres outage should
# answer 503 soon). DB_POOL_MAX_SIZE=0 turns the pool off (behind PgBouncer, say): a connection per request.
# A thread of our own that uses the ORM gives its connection back when done (connections.close_all()), or the pool
# never gets it back.
DATABASES["default"]["CONN_MAX_AGE"] = 0
DB_POOL_MAX_SIZE = env.int("DB_POOL_MAX_SIZE", default=8)
if DATABASES["default"]["ENGINE"].endswith(("postgresql", "postgis")) and DB_POOL_MAX_SIZE:
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": min(env.int("DB_POOL_MIN_SIZE", default=1), DB_POOL_MAX_SIZE),
        "max_size": DB_POOL_MAX_SIZE,
        "timeout": env.float("DB_POOL_TIMEOUT", default=2.0),
        # Connections above min_size that stay idle this long are closed.
        "max_idle": 60.0,
    }
# Connections are checked before use (by the pool, when there is one), so a restarted database costs one failed check.
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Concurrent writers (batch lines, the ledger, a Celery worker beside the gateway) wait their turn instead of
    # failing with "database is locked": a transaction takes the write lock when it begins (so it never has to
    # upgrade a read lock, which SQLite refuses without waiting), a busy writer is waited for up to the timeout,
    # and WAL lets reads go on while one writes.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
            "init_command": "PRAGMA journal_mode=WAL;",
        }
    )
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
# `manage.py seed_demo` writes the demo key and admin password here (`make serve ARGS=--mock` uses var/serve).
LLMOPS_DEMO_DIR = env.path("LLMOPS_DEMO_DIR", default=BASE_DIR / "var")
# Async CSV exports are written here (default storage); production may point STORAGES at S3 instead.
MEDIA_ROOT = env.path("MEDIA_ROOT", default=BASE_DIR / "var" / "media")
# Exports longer than this many days go through the async export instead of streaming.
LLMOPS_EXPORT_SYNC_MAX_DAYS = env.int("LLMOPS_EXPORT_SYNC_MAX_DAYS", default=62)
# The admin marks a model whose prices in force took effect longer ago than this: time to check them.
LLMOPS_PRICE_MAX_AGE_DAYS = env.int("LLMOPS_PRICE_MAX_AGE_DAYS", default=90)
# Monthly statements are pushed to this S3 bucket when set (boto3's usual AWS credentials).
LLMOPS_STATEMENTS_BUCKET = env("LLMOPS_STATEMENTS_BUCKET", default="")
# Hourly rollups are published to Amazon CloudWatch under this namespace when set (boto3's usual AWS credentials),
# each hour once after it has closed; the record of what is out lives in Redis.
LLMOPS_CLOUDWATCH_NAMESPACE = env("LLMOPS_CLOUDWATCH_NAMESPACE", default="")
# /metrics shows every tenant's traffic and cost: scrapers send this bearer token; unset, /metrics answers 401 to all,
# unless LLMOPS_METRICS_PUBLIC=true opens it to anyone who can reach it.
LLMOPS_METRICS_TOKEN = env("LLMOPS_METRICS_TOKEN", default="")
LLMOPS_METRICS_PUBLIC = env.bool("LLMOPS_METRICS_PUBLIC", default=False)

REDIS_URL = env("REDIS_URL", default="")
# "stream": ledger records are appended to a Redis stream that `manage.py ledger_drain` writes to Postgres in bulk
# (needs REDIS_URL); "direct": each request inserts its row. See docs/performance.md.
LLMOPS_LEDGER_MODE = env.str("LLMOPS_LEDGER_MODE", default="stream" if REDIS_URL else "direct")
if LLMOPS_LEDGER_MODE not in ("stream", "direct") or (LLMOPS_LEDGER_MODE == "stream" and not REDIS_URL):
    raise ImproperlyConfigured("LLMOPS_LEDGER_MODE must be 'direct', or 'stream' with REDIS_URL set")

CELERY_BROKER_URL = env("CELERY_BROKER_URL", default=REDIS_URL or "memory://")
CELERY_RESULT_BACKEND = env("CELERY_RESULT_BACKEND", default=None)
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=CELERY_BROKER_URL == "memory://")
CELERY_TASK_EAGER_PROPAGATES = True
# A worker keeps LOGGING's handlers, which redact (a task's retry is logged with its error), instead of its own.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# The dashboard refreshes the rollups when they lack a ledger row older than this. With no worker and beat (Celery
# eager, the embedded default) nothing else refreshes them, so every page open does.
LLMOPS_ROLLUPS_MAX_AGE_SECONDS = env.int(
    "LLMOPS_ROLLUPS_MAX_AGE_SECONDS", default=0 if CELERY_TASK_ALWAYS_EAGER else 60
)
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# Periodic tasks, by name. Each app's issue adds its own entries here.
CELERY_BEAT_SCHEDULE: dict[str, dict] = {
    "routing-cache-entries-expire": {"task": "routing.tasks.cache_expiry_run", "schedule": crontab(minute="*/10")},
    "billing-anomalies-detect": {"task": "billing.tasks.anomalies_detect", "schedule": crontab(minute=5)},
    # Alert deliveries a lost task left pending are queued again (billing/alerts/tasks.py).
    "billing-alert-deliveries-requeue": {
        "task": "billing.alerts.tasks.alert_deliveries_requeue",
        "schedule": crontab(minute="*/5"),
    },
    "billing-budget-counters-check": {
        "task": "billing.tasks.budget_counters_check",
        "schedule": crontab(hour=3, minute=15),
    },
    "billing-usage-rollups-refresh": {"task": "billing.tasks_finance.usage_rollups_refresh_task", "schedule": 60.0},
    "billing-usage-rollups-rebuild-recent": {
        "task": "billing.tasks_finance.usage_rollups_rebuild_recent_task",
        "schedule": crontab(hour=2, minute=30),
    },
    # The 2nd: every time zone's month has ended by noon UTC on the 1st (UTC-12's last), so every statement is final.
    "billing-statements-push": {
        "task": "billing.tasks_finance.statements_push_task",
        "schedule": crontab(day_of_month=2, hour=4, minute=0),
    },
    # Shadow evaluation's holds left by a worker that died: their bound is minutes (docs/quality.md).
    "billing-evaluation-holds-release": {
        "task": "billing.evaluation.tasks.evaluation_holds_release_task",
        "schedule": 60.0,
    },
}
if LLMOPS_CLOUDWATCH_NAMESPACE:
    if not REDIS_URL:
        raise ImproperlyConfigured("LLMOPS_CLOUDWATCH_NAMESPACE needs REDIS_URL (for the publisher watermark)")
    CELERY_BEAT_SCHEDULE["billing-rollups-cloudwatch-publish"] = {
        "task": "billing.tasks_finance.rollups_cloudwatch_publish_task",
        "schedule": crontab(minute=5),
    }

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_SCHEMA_CLASS": "llmops.api_schema.ApiAutoSchema",
    "EXCEPTION_HANDLER": "core.api.api_exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "llmops management API",
    "VERSION": "0.1.0",
    # Swagger UI and Redoc are served from drf-spectacular-sidecar's static files, never a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # The schema describes the management API; /v1 follows OpenAI's own API reference.
    "PREPROCESSING_HOOKS": ["llmops.api_schema.management_api_endpoints"],
}

# Key for provider credentials encrypted at rest (Fernet, urlsafe base64 of 32 bytes).
# Without one the embedded demo derives a key from SECRET_KEY.
LLMOPS_ENCRYPTION_KEY = env("LLMOPS_ENCRYPTION_KEY", default="")

# Gateway limits.
LLMOPS_MAX_BODY_BYTES = env.int("LLMOPS_MAX_BODY_BYTES", default=8 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = LLMOPS_MAX_BODY_BYTES
# Response cache (routing/cache). The embedder is a dotted path to a class with .embed(texts) -> float32 vectors;
# blank turns semantic caching off. A semantic candidate must reach the threshold (cosine similarity), per rule
# name in LLMOPS_CACHE_RULE_THRESHOLDS ("rule-a=0.9,rule-b=0.85"), else the default.
# The default runs all-MiniLM-L6-v2 through ONNX Runtime (int8); routing.cache.embedders.SentenceTransformerEmbedder
# runs it through torch. The ONNX files live in LLMOPS_CACHE_EMBEDDER_DIR (`manage.py embedder_export` writes them).
LLMOPS_CACHE_EMBEDDER = env("LLMOPS_CACHE_EMBEDDER", default="routing.cache.embedders.OnnxEmbedder")
LLMOPS_CACHE_EMBEDDER_DIR = env.path("LLMOPS_CACHE_EMBEDDER_DIR", default=BASE_DIR / "var" / "embedder")
LLMOPS_CACHE_EMBEDDINGS_URL = env("LLMOPS_CACHE_EMBEDDINGS_URL", default="")
LLMOPS_CACHE_EMBEDDINGS_MODEL = env("LLMOPS_CACHE_EMBEDDINGS_MODEL", default="text-embedding-3-small")
LLMOPS_CACHE_EMBEDDINGS_KEY_ENV = env("LLMOPS_CACHE_EMBEDDINGS_KEY_ENV", default="OPENAI_API_KEY")
# The cross-encoder (routing/cache/crossencoder.py) decides whether a candidate the guard lets through is served:
# its score must reach LLMOPS_CACHE_CROSSENC_THRESHOLD (chosen by cross-validation, bench/crossenc/README.md). Its
# int8 model and tokenizer live in LLMOPS_CACHE_CROSSENC_DIR (`manage.py crossenc_train` trains them at install on
# LLMOPS_CACHE_CROSSENC_TRAINING_PAIRS). "off" restores the rule it replaced: similarity at least 0.75 and the guard,
# which serves fewer paraphrases and more near-misses (docs/caching.md). While it is on, a worker whose model is
# missing serves no semantic hit.
LLMOPS_CACHE_CROSSENC = env.str("LLMOPS_CACHE_CROSSENC", default="on").lower()
if LLMOPS_CACHE_CROSSENC not in ("on", "off"):
    raise ImproperlyConfigured("LLMOPS_CACHE_CROSSENC must be 'on' or 'off'")
LLMOPS_CACHE_CROSSENC_THRESHOLD = env.float("LLMOPS_CACHE_CROSSENC_THRESHOLD", default=0.9070)
LLMOPS_CACHE_CROSSENC_DIR = env.path("LLMOPS_CACHE_CROSSENC_DIR", default=BASE_DIR / "var" / "crossenc")
LLMOPS_CACHE_CROSSENC_TRAINING_PAIRS = env.list(
    "LLMOPS_CACHE_CROSSENC_TRAINING_PAIRS",
    default=[
        str(BASE_DIR / "bench" / name) for name in ("cache_pairs.jsonl", "cache_holdout.jsonl", "cache_pairs_2.jsonl")
    ],
)
# The candidates' similarity gate: 0.65 in front of the cross-encoder, 0.75 without it.
LLMOPS_CACHE_SEMANTIC_THRESHOLD = env.float(
    "LLMOPS_CACHE_SEMANTIC_THRESHOLD", default=0.65 if LLMOPS_CACHE_CROSSENC == "on" else 0.75
)
LLMOPS_CACHE_RULE_THRESHOLDS = {
    rule: float(value) for rule, value in env.dict("LLMOPS_CACHE_RULE_THRESHOLDS", default={}).items()
}
# PostgreSQL searches semantic entries in the database (pgvector HNSW): how many graph neighbours a search keeps
# (pgvector's hnsw.ef_search; higher finds the nearest entries more surely, slower). At 40, a rare question's entry
# among 10,000 templated prompts of its context was missed for 1 to 3 of 20 rewordings; at 100 for 0 or 1, for about
# 0.08 ms more of Postgres's CPU a cacheable miss, its throughput the same (bench/hnsw_recall.py, docs/caching.md).
LLMOPS_CACHE_HNSW_EF_SEARCH = env.int("LLMOPS_CACHE_HNSW_EF_SEARCH", default=100)
# Set as each connection starts, so a lookup is one statement with no transaction around a SET LOCAL. Postgres
# keeps them as placeholders until the first vector operation loads pgvector, which then takes them up. PgBouncer
# refuses a connection that carries startup options, so without our pool (DB_POOL_MAX_SIZE=0, the setup behind
# PgBouncer) they are off by default: set them on the role instead (docs/caching.md).
LLMOPS_DB_HNSW_STARTUP_OPTIONS = env.bool("LLMOPS_DB_HNSW_STARTUP_OPTIONS", default=DB_POOL_MAX_SIZE > 0)
if DATABASES["default"]["ENGINE"].endswith(("postgresql", "postgis")) and LLMOPS_DB_HNSW_STARTUP_OPTIONS:
    hnsw_options = f"-c hnsw.ef_search={LLMOPS_CACHE_HNSW_EF_SEARCH} -c hnsw.iterative_scan=relaxed_order"
    database_options = DATABASES["default"].setdefault("OPTIONS", {})
    database_options["options"] = f"{database_options.get('options', '')} {hnsw_options}".strip()
# Elsewhere (SQLite) each process keeps its own index: how often it re-reads a tenant and model's index for entries
# other processes stored.
LLMOPS_CACHE_INDEX_REFRESH_SECONDS = env.float("LLMOPS_CACHE_INDEX_REFRESH_SECONDS", default=30.0)
# The most texts the embedding thread embeds in one call (the lookups that queued while the previous call ran).
LLMOPS_CACHE_EMBED_BATCH = env.int("LLMOPS_CACHE_EMBED_BATCH", default=32)
# How long a cacheable request waits for its prompt's embedding before it goes on as a miss (and a store waits
# before it keeps the answer for exact repeats only): a stalled embedder never holds requests up for longer.
LLMOPS_CACHE_EMBED_WAIT_SECONDS = env.float("LLMOPS_CACHE_EMBED_WAIT_SECONDS", default=2.0)
# How long a worker that finds the ONNX model missing exports it (or waits for another worker's export) before it
# gives up and runs with semantic caching off (`manage.py embedder_export` at install avoids the wait).
LLMOPS_CACHE_EMBEDDER_EXPORT_TIMEOUT = env.float("LLMOPS_CACHE_EMBEDDER_EXPORT_TIMEOUT", default=300.0)
# Budgets when REDIS_URL is set but Redis cannot be reached: "fail_closed" refuses requests under a block or
# downgrade budget (503 budget_unavailable); "database" counts in BudgetCounter rows instead. Never open.
# The answer cap set on a request under a budget that sent none, so its reservation is a true worst case.
LLMOPS_RESERVATION_MAX_TOKENS = env.int("LLMOPS_RESERVATION_MAX_TOKENS", default=4096)
# How long a routing rule's message_regex may search a request's last user message (plus a little per character of
# it: routing.policy.engine.regex_timeout_ms) before the rule counts as not matching (a warning names the tenant and
# rule): routing runs on the event loop, so a pattern that backtracks without end would stall every tenant's requests
# on the worker.
LLMOPS_ROUTING_REGEX_TIMEOUT_MS = env.int("LLMOPS_ROUTING_REGEX_TIMEOUT_MS", default=5)
if LLMOPS_ROUTING_REGEX_TIMEOUT_MS < 1:
    raise ImproperlyConfigured("LLMOPS_ROUTING_REGEX_TIMEOUT_MS must be at least 1")
# Shadow evaluation (docs/quality.md): a sample waiting longer than this in the broker's `shadow` queue is dropped by
# the worker, and a sample sealed larger than this many bytes is not sampled (the broker holds every waiting one).
LLMOPS_SHADOW_TASK_EXPIRES_SECONDS = env.float("LLMOPS_SHADOW_TASK_EXPIRES_SECONDS", default=600.0)
LLMOPS_SHADOW_SAMPLE_MAX_BYTES = env.int("LLMOPS_SHADOW_SAMPLE_MAX_BYTES", default=256 * 1024)
LLMOPS_BUDGET_REDIS_FAILURE = env.str("LLMOPS_BUDGET_REDIS_FAILURE", default="fail_closed")
if LLMOPS_BUDGET_REDIS_FAILURE not in ("fail_closed", "database"):
    raise ImproperlyConfigured("LLMOPS_BUDGET_REDIS_FAILURE must be 'fail_closed' or 'database'")
# Chat completions one tenant may have in flight at once, across every gateway process, unless the tenant's own
# setting says otherwise (0: no limit). Each is held under a lease renewed while it runs, so the slots of a gateway
# process that dies are free again after the lease.
LLMOPS_TENANT_MAX_INFLIGHT = env.int("LLMOPS_TENANT_MAX_INFLIGHT", default=256)
LLMOPS_TENANT_INFLIGHT_LEASE_SECONDS = env.float("LLMOPS_TENANT_INFLIGHT_LEASE_SECONDS", default=30.0)
# Anomaly detection: a window is flagged when it lies this many robust deviations from its 14-day baseline,
# judged only where baseline windows and the window itself saw at least the minimum number of requests.
LLMOPS_ANOMALY_MIN_SCORE = env.float("LLMOPS_ANOMALY_MIN_SCORE", default=5.0)
LLMOPS_ANOMALY_MIN_REQUESTS = env.int("LLMOPS_ANOMALY_MIN_REQUESTS", default=20)

# Alert email, e.g. EMAIL_URL=smtp+tls://user:password@smtp.example.com:587; the demo prints mail to the console.
vars().update(env.email_url("EMAIL_URL", default="consolemail://"))
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="llmops@localhost")
# Seconds an SMTP connect or reply may take: a mail server that stops answering must not hold an alert worker.
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)
# AWS accounts (comma-separated ids) whose SNS topics alert channels may publish to; empty refuses SNS channels. The
# platform's AWS credentials may reach topics that are no tenant's to publish to.
LLMOPS_ALERT_SNS_ALLOWED_ACCOUNTS = env.list("LLMOPS_ALERT_SNS_ALLOWED_ACCOUNTS", default=[])
LLMOPS_UPSTREAM_MAX_CONNECTIONS = env.int("LLMOPS_UPSTREAM_MAX_CONNECTIONS", default=512)
# How long a gateway worker stopping gracefully (SIGTERM) waits, once its connections have ended, for the work its
# requests left running (core.background: a disconnected client's ledger row and settlement, failed attempts' charges).
LLMOPS_SHUTDOWN_DRAIN_SECONDS = env.float("LLMOPS_SHUTDOWN_DRAIN_SECONDS", default=10.0)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    # Every handler redacts: no prompt text's secrets, key or credential reaches a log line.
    "filters": {"redact": {"()": "llmops.log_redaction.RedactingFilter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["redact"]}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    # httpx logs each request's URL at INFO: a tenant's webhook URL is a credential (Slack), sent to its checked IP
    # address, where the filter's Slack rule cannot recognise it.
    "loggers": {"httpx": {"level": "WARNING"}},
}

# Files and batches (/v1/files, /v1/batches; see docs/batch.md).
# Uploaded and generated files go to this S3 bucket when set (boto3's usual AWS credentials), else under MEDIA_ROOT.
LLMOPS_FILES_S3_BUCKET = env("LLMOPS_FILES_S3_BUCKET", default="")
LLMOPS_FILES_S3_PREFIX = env("LLMOPS_FILES_S3_PREFIX", default="llmops-files/")
LLMOPS_FILES_MAX_BYTES = env.int("LLMOPS_FILES_MAX_BYTES", default=100 * 1024 * 1024)
LLMOPS_BATCH_MAX_LINES = env.int("LLMOPS_BATCH_MAX_LINES", default=50_000)
# Lines in flight at once within one worker process: per tenant (one batch's lines), and per upstream provider.
LLMOPS_BATCH_TENANT_CONCURRENCY = env.int("LLMOPS_BATCH_TENANT_CONCURRENCY", default=8)
LLMOPS_BATCH_PROVIDER_CONCURRENCY = env.int("LLMOPS_BATCH_PROVIDER_CONCURRENCY", default=16)
# A batch's runner renews its lease while it runs; a lease this old means the runner died and another takes over,
# running again the lines it had claimed but not recorded.
LLMOPS_BATCH_LEASE_SECONDS = env.int("LLMOPS_BATCH_LEASE_SECONDS", default=60)
# A line whose answer was a transient failure (429, 5xx) is run again, up to this many attempts in all.
LLMOPS_BATCH_LINE_MAX_ATTEMPTS = env.int("LLMOPS_BATCH_LINE_MAX_ATTEMPTS", default=2)
# Provider names (comma-separated) whose batch endpoint receives the lines they would serve, at the batch discount.
LLMOPS_BATCH_DELEGATE_PROVIDERS = env.list("LLMOPS_BATCH_DELEGATE_PROVIDERS", default=[])
# How often an unfinished batch is looked at again: provider batches polled, lines of a dead worker taken over.
LLMOPS_BATCH_POLL_SECONDS = env.float("LLMOPS_BATCH_POLL_SECONDS", default=30.0)
# Async jobs' webhooks: per-attempt timeout and attempts before giving up.
LLMOPS_JOBS_WEBHOOK_TIMEOUT_SECONDS = env.float("LLMOPS_JOBS_WEBHOOK_TIMEOUT_SECONDS", default=10.0)
LLMOPS_JOBS_WEBHOOK_MAX_ATTEMPTS = env.int("LLMOPS_JOBS_WEBHOOK_MAX_ATTEMPTS", default=5)
CELERY_BEAT_SCHEDULE["gateway-batches-resume"] = {
    "task": "llmops.gateway.batch_tasks.batches_resume",
    "schedule": 60.0,
}

# Security (docs/security.md).
# Admin login throttling (django-axes): this many failures for a username from one address locks it out.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = env.int("LLMOPS_LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("LLMOPS_LOGIN_LOCKOUT_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# The client address counts failures: REMOTE_ADDR, or with this many proxies in front, the address the outermost saw in
# X-Forwarded-For (llmops/client_ip.py). Never more than the proxies that really append to it: each one more lets a
# client name its own address. django-axes's AXES_IPWARE_* settings need django-ipware, which is not installed.
LLMOPS_TRUSTED_PROXY_COUNT = env.int("LLMOPS_TRUSTED_PROXY_COUNT", default=0)
AXES_CLIENT_IP_CALLABLE = "llmops.client_ip.client_ip"
# Behind a TLS-terminating proxy (LLMOPS_HTTPS=true, never with DEBUG): secure cookies, HSTS, HTTPS redirects.
LLMOPS_HTTPS = env.bool("LLMOPS_HTTPS", default=False) and not DEBUG
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = LLMOPS_HTTPS
SESSION_COOKIE_HTTPONLY = True
SECURE_SSL_REDIRECT = LLMOPS_HTTPS and env.bool("LLMOPS_SSL_REDIRECT", default=True)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if LLMOPS_HTTPS else None
SECURE_HSTS_SECONDS = env.int("LLMOPS_HSTS_SECONDS", default=31_536_000) if LLMOPS_HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = LLMOPS_HTTPS
SECURE_HSTS_PRELOAD = LLMOPS_HTTPS and env.bool("LLMOPS_HSTS_PRELOAD", default=True)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# Content-Security-Policy of every browser-facing answer (django-csp's middleware; /v1 runs without the stack).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}
# The API docs (Swagger UI, Redoc) boot from inline scripts and blob workers: their two views get this policy instead
# (llmops/urls.py).
LLMOPS_CSP_API_DOCS = {
    "default-src": [SELF],
    "script-src": [SELF, UNSAFE_INLINE],
    "style-src": [SELF, UNSAFE_INLINE],
    "img-src": [SELF, "data:"],
    "worker-src": [SELF, "blob:"],
    "object-src": [NONE],
    "base-uri": [SELF],
    "frame-ancestors": [NONE],
}
LLMOPS_PERMISSIONS_POLICY = "camera=(), microphone=(), geolocation=(), payment=()"
# /v1 request bodies: JSON nested deeper than this is refused with 400 (orjson's own limit is 1024).
LLMOPS_MAX_JSON_DEPTH = env.int("LLMOPS_MAX_JSON_DEPTH", default=64)
# Provider base URLs and alert webhooks may point at loopback, private or link-local addresses only when this is on:
# the embedded demo's mock upstream is on 127.0.0.1; production turns it off (the cloud metadata service is the risk).
LLMOPS_ALLOW_PRIVATE_UPSTREAMS = env.bool("LLMOPS_ALLOW_PRIVATE_UPSTREAMS", default=not LLMOPS_HTTPS)
# Internal destinations outbound calls may reach although private ones are refused, as ADDRESS[/PREFIX]:PORT[-PORT]
# (comma-separated, e.g. "10.0.5.7:443,[fd00::5]:8443"): an internal webhook relay. Never a metadata address.
LLMOPS_OUTBOUND_ALLOWLIST = env.list("LLMOPS_OUTBOUND_ALLOWLIST", default=[])
# Provider credentials referenced as aws-sm://<secret id> or aws-ssm://<parameter name> are cached this long.
LLMOPS_SECRET_REFERENCE_TTL_SECONDS = env.float("LLMOPS_SECRET_REFERENCE_TTL_SECONDS", default=300.0)
# Payload logging (off unless a tenant turns it on): how long a process trusts the settings it read.
LLMOPS_PAYLOAD_LOG_SETTINGS_TTL_SECONDS = env.float("LLMOPS_PAYLOAD_LOG_SETTINGS_TTL_SECONDS", default=5.0)
# How long one of a tenant's own redaction patterns may run on one string of a payload; past it the payload is stored
# as [REDACTED] whole (a warning names the tenant), so a pattern that backtracks without end holds no worker thread.
LLMOPS_PAYLOAD_LOG_PATTERN_TIMEOUT_MS = env.int("LLMOPS_PAYLOAD_LOG_PATTERN_TIMEOUT_MS", default=100)
if LLMOPS_PAYLOAD_LOG_PATTERN_TIMEOUT_MS < 1:
    raise ImproperlyConfigured("LLMOPS_PAYLOAD_LOG_PATTERN_TIMEOUT_MS must be at least 1")
CELERY_BEAT_SCHEDULE["tenants-payload-logs-purge"] = {
    "task": "tenants.tasks.payload_logs_purge_task",
    "schedule": crontab(minute=40),
}

# Every periodic task at this interval instead of its schedule, when set: for end-to-end tests, never production.
LLMOPS_BEAT_INTERVAL_SECONDS = env.float("LLMOPS_BEAT_INTERVAL_SECONDS", default=0.0)
if LLMOPS_BEAT_INTERVAL_SECONDS:
    for entry in CELERY_BEAT_SCHEDULE.values():
        entry["schedule"] = LLMOPS_BEAT_INTERVAL_SECONDS
