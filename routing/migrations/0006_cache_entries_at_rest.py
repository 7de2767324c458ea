"""Cache entries keep no request and no prompt in clear: keyed hashes, and encrypted answer and prompt text.

Existing entries are deleted rather than converted: a cache may be emptied at any time (the next requests refill
it), and converting would re-key every entry from the very plaintext this migration exists to remove. Their Redis
copies (plaintext answers) are deleted too; if Redis cannot be reached they expire by their TTL, and the new code
never reads them (their keys are plain SHA-256, the new ones keyed hashes).
"""

import logging

import redis
from django.conf import settings
from django.db import migrations, models

logger = logging.getLogger(__name__)
REDIS_CACHE_KEYS = "llmops:cache:*"


def empty_the_cache(apps, schema_editor):
    apps.get_model("routing", "CacheEntry").objects.all().delete()
    if not settings.REDIS_URL:
        return
    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
        keys = list(client.scan_iter(match=REDIS_CACHE_KEYS, count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    except redis.RedisError:
        logger.warning("cache entries' Redis copies not deleted; they expire by their TTL", exc_info=True)


class Migration(migrations.Migration):
    dependencies = [
        ("routing", "0005_model_max_output_tokens"),
    ]

    operations = [
        migrations.RunPython(empty_the_cache, migrations.RunPython.noop),
        migrations.RemoveField(model_name="cacheentry", name="request"),
        migrations.RemoveField(model_name="cacheentry", name="answer"),
        migrations.RemoveField(model_name="cacheentry", name="normalized_prompt"),
        migrations.AddField(
            model_name="cacheentry",
            name="answer_encrypted",
            field=models.TextField(
                default="",
                help_text="The OpenAI chat.completion body (a streamed answer assembled), as JSON, encrypted.",
            ),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="cacheentry",
            name="prompt_encrypted",
            field=models.TextField(
                blank=True,
                help_text="The normalised last user turn, semantic only, encrypted; redaction finds nothing in it.",
            ),
        ),
        migrations.AlterField(
            model_name="cacheentry",
            name="key_hash",
            field=models.CharField(
                help_text="HMAC-SHA256 (server key) of the tenant, served model and canonical request.", max_length=64
            ),
        ),
        migrations.AlterField(
            model_name="cacheentry",
            name="context_fingerprint",
            field=models.CharField(
                blank=True,
                help_text="HMAC-SHA256 (server key) of the system prompt, earlier turns and answer-changing options.",
                max_length=64,
            ),
        ),
    ]
