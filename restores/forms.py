"""Forms of the restores pages: a target, its checks (formsets), a right to grant, and a recovery point."""

from datetime import datetime

from django import forms
from django.utils import timezone

from backups.models import System
from restores.models import TARGET_RIGHTS, Target
from restores.selectors import grantable_users


class TargetForm(forms.Form):
    """A target's own fields; the service validates them again (secret reference, paths, hosts)."""

    name = forms.CharField(max_length=63, help_text="Lowercase letters, digits, '-' and '_'. "
                           "People type it to confirm a restore.")
    environment = forms.ChoiceField(choices=Target.Environment.choices)
    description = forms.CharField(max_length=300, required=False)
    database_ref = forms.CharField(
        label="Database (secret reference)", max_length=300,
        help_text="env:VARIABLE or file:/absolute/path holding the libpq URL "
                  "(postgresql://user:password@host:5432/db). The URL itself is never stored.")
    config_dir = forms.CharField(label="Config directory", max_length=500, required=False,
                                 help_text="Absolute path; leave empty if this target takes no config restores.")
    health_check_hosts = forms.CharField(
        label="Approved health-check hosts", required=False, widget=forms.Textarea(attrs={"rows": 3}),
        help_text="One per line, on top of DRPANEL_HEALTHCHECK_ALLOWED_HOSTS: a host name, *.domain, an IP "
                  "address or a network. A private address is only called if it is listed itself.")
    system = forms.ModelChoiceField(
        queryset=None, required=False, empty_label="any system", to_field_name="name",
        help_text="The system whose artifacts this target receives; restores of other systems' artifacts are "
                  "refused, and its sanity checks also run in that system's restore-tests.")
    is_active = forms.BooleanField(label="Active (accepts new restores)", required=False, initial=True)
    worker_pool = forms.CharField(
        label="Worker pool", max_length=40, required=False,
        help_text="The workers that restore into it (started with --pool NAME on a host near its database). Empty: "
                  "the pool of the artifact's system, else any worker. Changing it needs a second person.")

    kind = forms.ChoiceField(
        choices=Target.Kind.choices, initial=Target.Kind.DATABASE, required=False,
        help_text="A new server: whole-server recoveries of a point in time go into a new data directory on the "
                  "target host (the three fields below); the database above then names a database of that new "
                  "server, which its checks use.")
    server_data_dir = forms.CharField(
        label="New server: data directory", max_length=500, required=False,
        help_text="Absolute path under DRPANEL_SERVER_DATA_ROOTS on the target host; it must be empty or absent "
                  "when a recovery starts.")
    server_port = forms.IntegerField(label="New server: port", min_value=1024, max_value=65535, required=False)
    server_user = forms.CharField(label="New server: OS user", max_length=32, required=False,
                                  help_text="Owns and runs the new server (never root), e.g. postgres.")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["system"].queryset = System.objects.order_by("name")

    def clean_kind(self):
        return self.cleaned_data["kind"] or Target.Kind.DATABASE

    def clean_health_check_hosts(self):
        value = self.cleaned_data["health_check_hosts"]
        return [line.strip() for line in value.replace(",", "\n").splitlines() if line.strip()]

    @classmethod
    def initial_for(cls, target: Target) -> dict:
        return {
            "name": target.name, "environment": target.environment, "description": target.description,
            "database_ref": target.database_ref, "config_dir": target.config_dir,
            "health_check_hosts": "\n".join(target.health_check_hosts), "is_active": target.is_active,
            "system": target.system.name if target.system_id else None, "worker_pool": target.worker_pool,
            "kind": target.kind, "server_data_dir": target.server_data_dir, "server_port": target.server_port,
            "server_user": target.server_user,
        }


class SanityCheckForm(forms.Form):
    """One SQL sanity check."""

    name = forms.CharField(max_length=100)
    query = forms.CharField(max_length=4000, widget=forms.Textarea(attrs={"rows": 2}))
    expectation = forms.CharField(max_length=200, help_text="e.g. >= 1, = 0, != 'broken'")


class HealthCheckForm(forms.Form):
    """One HTTP health check."""

    url = forms.CharField(label="URL", max_length=2000)
    expected_status = forms.IntegerField(min_value=100, max_value=599, initial=200)


SanityCheckFormSet = forms.formset_factory(SanityCheckForm, extra=2, can_delete=True)
HealthCheckFormSet = forms.formset_factory(HealthCheckForm, extra=2, can_delete=True)


def checks_from(formset) -> list[dict]:
    """The filled, not-deleted rows of a valid formset."""
    return [
        {k: v for k, v in form.cleaned_data.items() if k != "DELETE"}
        for form in formset.forms
        if form.cleaned_data and not form.cleaned_data.get("DELETE")
    ]


class GrantForm(forms.Form):
    """Grant one right on a target to one user."""

    user = forms.ModelChoiceField(queryset=None, to_field_name="username")
    right = forms.ChoiceField(choices=list(TARGET_RIGHTS.items()))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["user"].queryset = grantable_users()


def recovery_point_from(kind: str, moment: str, name: str):
    """The recovery point a restore form asks for: ``latest``, ``time`` (read in the panel's zone, which the form
    shows, unless the text carries its own offset) or ``name``. Raises ``ValueError`` with what to fix."""
    from restores.pitr import RecoveryPoint

    if kind == "latest":
        return RecoveryPoint.latest()
    if kind == "name":
        return RecoveryPoint.named((name or "").strip())
    if kind != "time":
        raise ValueError("choose latest, a moment or a named restore point")
    try:
        parsed = datetime.fromisoformat((moment or "").strip())
    except ValueError:
        raise ValueError(f"{moment!r} is not a date and time (YYYY-MM-DD HH:MM[:SS])") from None
    if timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed, timezone.get_current_timezone())
    return RecoveryPoint.at(parsed)
