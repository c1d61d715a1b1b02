"""The audit log in Django's admin: read-only, for those who may read the audit trail."""

from django.contrib import admin

from compliance.audit.models import AuditEvent
from drpanel.permissions import Cap, has_cap


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Lists and shows events; nobody adds, changes or deletes one here."""

    list_display = ("seq", "occurred_at", "actor_username", "action", "object_type", "object_id", "outcome")
    list_filter = ("outcome",)
    search_fields = ("actor_username", "action", "object_type", "object_id", "object_repr")
    ordering = ("-seq",)
    actions = None
    readonly_fields = [field.name for field in AuditEvent._meta.fields]

    def has_module_permission(self, request) -> bool:
        return has_cap(request.user, Cap.READ_AUDIT)

    def has_view_permission(self, request, obj=None) -> bool:
        return has_cap(request.user, Cap.READ_AUDIT)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
