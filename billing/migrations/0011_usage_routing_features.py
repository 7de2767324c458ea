"""The ledger keeps the routing features of each request (issue #18's what-if replay): task type, user tier, tools,
images and the difficulty score. Rows written before stay as they are, their features unknown (has_tools empty).

Every column is nullable or has a database default, so adding them rewrites no row of the ledger and a process of the
previous release can go on inserting rows while the new one rolls out.
"""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('billing', '0010_usage_customer_index'),
    ]

    operations = [
        migrations.AddField(
            model_name='usagerecord',
            name='difficulty_score',
            field=models.PositiveSmallIntegerField(blank=True, help_text="The alias's difficulty score (0-100), when routing computed one.", null=True),
        ),
        migrations.AddField(
            model_name='usagerecord',
            name='has_images',
            field=models.BooleanField(blank=True, help_text='The request carried images.', null=True),
        ),
        migrations.AddField(
            model_name='usagerecord',
            name='has_tools',
            field=models.BooleanField(blank=True, help_text='The request offered tools; empty when its routing features are unknown.', null=True),
        ),
        migrations.AddField(
            model_name='usagerecord',
            name='task_type',
            field=models.CharField(blank=True, db_default='', default='', help_text='metadata.task_type or x-llmops-task-type, as sent (cut to 128 characters).', max_length=128),
        ),
        migrations.AddField(
            model_name='usagerecord',
            name='user_tier',
            field=models.CharField(blank=True, db_default='', default='', help_text='metadata.user_tier or x-llmops-user-tier, as sent (cut to 128 characters).', max_length=128),
        ),
    ]
