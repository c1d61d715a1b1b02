"""API tokens get an expiry (existing ones: created + 90 days), a kind (api, metrics) and a read-only flag;
failed sign-ins with unknown usernames are counted per window."""

from datetime import timedelta

from django.db import migrations, models

EXISTING_TOKEN_DAYS = 90


def expire_existing_tokens(apps, schema_editor):
    ApiToken = apps.get_model("drpanel", "ApiToken")
    for token in ApiToken.objects.filter(expires_at__isnull=True).only("pk", "created_at"):
        ApiToken.objects.filter(pk=token.pk).update(expires_at=token.created_at + timedelta(days=EXISTING_TOKEN_DAYS))


class Migration(migrations.Migration):

    dependencies = [
        ("drpanel", "0003_approval"),
    ]

    operations = [
        migrations.AddField(
            model_name="apitoken",
            name="kind",
            field=models.CharField(choices=[("api", "API"), ("metrics", "metrics scrape only")], default="api",
                                   max_length=10),
        ),
        migrations.AddField(
            model_name="apitoken",
            name="read_only",
            field=models.BooleanField(default=False, help_text="Only safe methods (GET, HEAD, OPTIONS)."),
        ),
        migrations.AddField(
            model_name="apitoken",
            name="expires_at",
            field=models.DateTimeField(null=True),
        ),
        migrations.RunPython(expire_existing_tokens, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="apitoken",
            name="expires_at",
            field=models.DateTimeField(),
        ),
        migrations.CreateModel(
            name="SignInFailureWindow",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("window_start", models.DateTimeField(unique=True)),
                ("window_end", models.DateTimeField()),
                ("failures", models.PositiveIntegerField(default=0)),
                ("lockouts", models.PositiveIntegerField(default=0)),
                ("addresses", models.JSONField(blank=True, default=dict,
                                               help_text="Failures per client address (the first 20).")),
                ("recorded_at", models.DateTimeField(blank=True, null=True)),
            ],
            options={"ordering": ["window_start"]},
        ),
    ]
