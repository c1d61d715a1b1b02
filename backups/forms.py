"""Forms of the admin pages (systems, storage locations) and of the catalog's actions."""

from django import forms

from backups.models import StorageLocation, System


class ConfigPathsField(forms.CharField):
    """One absolute path per line."""

    widget = forms.Textarea(attrs={"rows": 3})

    def prepare_value(self, value):
        if isinstance(value, list):
            return "\n".join(value)
        return value

    def to_python(self, value):
        return [line.strip() for line in (value or "").splitlines() if line.strip()]


class SystemForm(forms.ModelForm):
    config_paths = ConfigPathsField(required=False, help_text="Absolute paths, one per line.")
    # Continuous protection's numbers keep their current value (or the default) when a form leaves them out.
    CONTINUOUS_NUMBERS = ("rpo_target_minutes", "base_every_hours", "recovery_window_days")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in self.CONTINUOUS_NUMBERS:
            self.fields[name].required = False

    def clean(self):
        cleaned = super().clean()
        for name in self.CONTINUOUS_NUMBERS:
            if cleaned.get(name) is None and name not in self.errors:
                cleaned[name] = getattr(self.instance, name)
        return cleaned

    class Meta:
        model = System
        fields = ["name", "description", "database_ref", "config_paths", "schedule_enabled", "full_every_hours",
                  "incremental_enabled", "incremental_every_hours", "config_every_hours", "keep_last", "keep_daily",
                  "keep_weekly", "keep_monthly", "continuous_enabled", "rpo_target_minutes", "base_every_hours",
                  "recovery_window_days", "worker_pool"]


class LocationForm(forms.ModelForm):
    endpoint_url = forms.URLField(required=False, assume_scheme="https",
                                  help_text="For S3-compatible stores; empty for AWS.")
    class Meta:
        model = StorageLocation
        fields = ["name", "kind", "role", "enabled", "path", "bucket", "prefix", "region", "endpoint_url",
                  "access_key_ref", "secret_key_ref"]
