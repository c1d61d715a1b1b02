"""Users and groups in Django's admin, without a way around the second person.

The stock admins let the Admin group make anyone (itself included) superuser, staff, Manager or
Admin, or give those groups any permission, alone. Here the privileged fields are read-only for
everybody and groups can only be viewed: such changes go through ``drpanel.roles`` (the role-change
page), where another Manager or Admin approves them with their password. Nobody edits another
privileged account here either (its password above all): setting a Manager's password would let an
admin approve its own requests as that Manager.
"""

from django.contrib import admin
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group, User
from django.urls import reverse
from django.utils.html import format_html

from drpanel.roles import PRIVILEGED_ROLES

PRIVILEGED_USER_FIELDS = ("is_staff", "is_superuser", "groups", "user_permissions")


def is_privileged(user) -> bool:
    """A Manager, an Admin, staff or superuser: an account that can approve or administer."""
    return bool(user.is_staff or user.is_superuser
                or user.groups.filter(name__in=PRIVILEGED_ROLES).exists())


admin.site.unregister(User)
admin.site.unregister(Group)


@admin.register(User)
class PanelUserAdmin(UserAdmin):
    """Names, email, password and the active flag are edited here; roles and privileges on the role-change page."""

    readonly_fields = (*PRIVILEGED_USER_FIELDS, "roles_page", "last_login", "date_joined")
    fieldsets = (
        (None, {"fields": ("username", "password")}),
        ("Personal info", {"fields": ("first_name", "last_name", "email")}),
        ("Roles and privileges (changed with a second person's approval)",
         {"fields": ("is_active", "roles_page", *PRIVILEGED_USER_FIELDS)}),
        ("Important dates", {"fields": ("last_login", "date_joined")}),
    )

    def has_change_permission(self, request, obj=None) -> bool:
        if obj is not None and obj.pk != request.user.pk and is_privileged(obj):
            return False
        return super().has_change_permission(request, obj)

    @admin.display(description="Change roles")
    def roles_page(self, obj) -> str:
        if obj is None or obj.pk is None:
            return "-"
        return format_html('<a href="{}">Change roles and privileges (waits for a second person)</a>',
                           reverse("drpanel:user-roles", args=[obj.pk]))


@admin.register(Group)
class PanelGroupAdmin(GroupAdmin):
    """Groups are roles: shown here, changed only through the role-change service."""

    readonly_fields = ("name", "permissions")

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
