"""Audit of user, group and permission changes, wherever they are made (admin, shell, services, jobs).

Events (the actor is whoever is signed in to the request making the change, else the system):

- ``user.created`` / ``user.changed`` (username, names, email, ``is_active``, ``is_staff``,
  ``is_superuser`` as ``[before, after]``) / ``user.deleted``;
- ``user.password_changed`` (that it changed, never the hash) and ``user.password_rehashed``
  (Django upgraded the stored hash at sign-in; the password itself did not change);
- ``group.created`` / ``group.changed`` / ``group.deleted``;
- ``user.groups_changed`` / ``group.members_changed``, ``user.permissions_changed`` /
  ``group.permissions_changed`` / ``permission.users_changed`` / ``permission.groups_changed``
  (``added``, ``removed``, ``cleared``), named by the side the change was made from;
- ``object_permission.granted`` / ``object_permission.revoked`` for django-guardian's user
  and group object permissions, the object being the one the right is on.

Each event is written inside the change's own transaction where Django opens one (the
admin, deletions, m2m changes); if it cannot be written, the change fails with it.
"""

from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import identify_hasher
from django.contrib.auth.models import Group, Permission
from django.core.exceptions import ObjectDoesNotExist
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_delete, pre_save
from guardian.utils import get_group_obj_perms_model, get_user_obj_perms_model

from compliance.audit.actions import AuditAction
from compliance.audit.record import audit_record
from drpanel.context import current_request

USER_FIELDS = ("username", "email", "first_name", "last_name", "is_active", "is_staff", "is_superuser")


def _actor():
    request = current_request()
    user = getattr(request, "user", None) if request is not None else None
    return user if user is not None and user.is_authenticated else None


def _label(obj) -> str:
    if isinstance(obj, Permission):
        return f"{obj.content_type.app_label}.{obj.codename}"
    if isinstance(obj, Group):
        return obj.name
    return obj.get_username()


def _labels(model, pks) -> list[str]:
    queryset = model.objects.filter(pk__in=pks)
    if model is Permission:
        queryset = queryset.select_related("content_type")
    return sorted(_label(obj) for obj in queryset)


# --- users and groups -----------------------------------------------------------------------

def _remember_user(sender, instance, raw=False, update_fields=None, **kwargs):
    if raw or instance._state.adding or instance.pk is None:
        return
    watched = {*USER_FIELDS, "password"}
    if update_fields is not None and not watched & set(update_fields):
        return  # e.g. last_login at each sign-in
    instance._audit_before = sender._default_manager.filter(pk=instance.pk).values(*watched).first()


def _audit_user_saved(sender, instance, created, raw=False, update_fields=None, **kwargs):
    if raw:
        return
    actor = _actor()
    if created:
        audit_record(actor=actor, action=AuditAction.USER_CREATED, obj=instance, details={
            **{name: getattr(instance, name) for name in USER_FIELDS},
            "usable_password": instance.has_usable_password(),
        })
        return
    before = instance.__dict__.pop("_audit_before", None)
    if before is None:
        return
    changes = {name: [before[name], getattr(instance, name)] for name in USER_FIELDS
               if before[name] != getattr(instance, name)}
    if changes:
        audit_record(actor=actor, action=AuditAction.USER_CHANGED, obj=instance, details={"changes": changes})
    if before["password"] != instance.password:
        # check_password() upgrades an old hash with save(update_fields=["password"]) after
        # forgetting the raw password; set_password() keeps it until save() has run.
        rehash = instance._password is None and update_fields is not None and set(update_fields) == {"password"}
        if rehash:
            audit_record(actor=actor, action=AuditAction.USER_PASSWORD_REHASHED, obj=instance,
                         details={"algorithm": _algorithm(instance.password)})
        else:
            audit_record(actor=actor, action=AuditAction.USER_PASSWORD_CHANGED, obj=instance,
                         details={"usable_password": instance.has_usable_password()})


def _algorithm(encoded: str) -> str:
    try:
        return identify_hasher(encoded).algorithm
    except ValueError:
        return "unknown"


def _audit_user_deleted(sender, instance, **kwargs):
    # Before the deletion, inside its transaction: the memberships are still readable.
    audit_record(actor=_actor(), action=AuditAction.USER_DELETED, obj=instance, details={
        "username": instance.get_username(),
        "groups": sorted(instance.groups.values_list("name", flat=True)),
        "is_superuser": instance.is_superuser,
    })


def _remember_group(sender, instance, raw=False, **kwargs):
    if not raw and not instance._state.adding and instance.pk is not None:
        instance._audit_before = sender.objects.filter(pk=instance.pk).values_list("name", flat=True).first()


def _audit_group_saved(sender, instance, created, raw=False, **kwargs):
    if raw:
        return
    if created:
        audit_record(actor=_actor(), action=AuditAction.GROUP_CREATED, obj=instance, details={"name": instance.name})
        return
    before = instance.__dict__.pop("_audit_before", None)
    if before is not None and before != instance.name:
        audit_record(actor=_actor(), action=AuditAction.GROUP_CHANGED, obj=instance,
                     details={"changes": {"name": [before, instance.name]}})


def _audit_group_deleted(sender, instance, **kwargs):
    audit_record(actor=_actor(), action=AuditAction.GROUP_DELETED, obj=instance, details={
        "name": instance.name,
        "members": sorted(instance.user_set.values_list("username", flat=True)),
    })


# --- memberships and permissions (m2m) ------------------------------------------------------

def _m2m_receiver(forward_action: AuditAction, reverse_action: AuditAction):
    """A receiver for one m2m relation; the event is named after the side the change came from."""

    def receiver(sender, instance, action, reverse, model, pk_set, **kwargs):
        if action == "pre_remove":
            # pk_set holds what was asked for, present or not: keep only what is really there.
            related = getattr(instance, _accessor(sender, instance, reverse))
            instance.__dict__[f"_audit_{sender.__name__}"] = set(
                related.filter(pk__in=pk_set).values_list("pk", flat=True))
            return
        if action == "pre_clear":
            related = getattr(instance, _accessor(sender, instance, reverse))
            instance.__dict__[f"_audit_{sender.__name__}"] = set(related.values_list("pk", flat=True))
            return
        if action == "post_add":
            change, pks = "added", pk_set
        elif action in ("post_remove", "post_clear"):
            change = "removed" if action == "post_remove" else "cleared"
            pks = instance.__dict__.pop(f"_audit_{sender.__name__}", set())
        else:
            return
        if pks:
            audit_record(actor=_actor(), action=reverse_action if reverse else forward_action, obj=instance,
                         details={change: _labels(model, pks)})

    return receiver


def _accessor(through, instance, reverse) -> str:
    meta = type(instance)._meta
    if reverse:
        for rel in meta.related_objects:
            if rel.many_to_many and rel.through is through:
                return rel.get_accessor_name()
    else:
        for field in meta.many_to_many:
            if field.remote_field.through is through:
                return field.name
    raise LookupError(f"no relation through {through.__name__} on {type(instance).__name__}")


# --- django-guardian object permissions -----------------------------------------------------

def _holder(perm) -> dict:
    try:
        return {"user": perm.user.get_username()} if hasattr(perm, "user_id") else {"group": perm.group.name}
    except ObjectDoesNotExist:  # the holder is being deleted along with its rights
        return {"user_id": perm.user_id} if hasattr(perm, "user_id") else {"group_id": perm.group_id}


def _object_permission_event(action: AuditAction, perm) -> None:
    holder = _holder(perm)
    content_type = perm.content_type
    target = content_type.model_class()
    obj = target._default_manager.filter(pk=perm.object_pk).first() if target is not None else None
    audit_record(
        actor=_actor(), action=action, obj=obj,
        object_type=f"{content_type.app_label}.{content_type.model}", object_id=str(perm.object_pk),
        details={**holder, "permission": f"{content_type.app_label}.{perm.permission.codename}"},
    )


def _audit_object_permission_saved(sender, instance, created, raw=False, **kwargs):
    if created and not raw:
        _object_permission_event(AuditAction.OBJECT_PERMISSION_GRANTED, instance)


def _audit_object_permission_deleted(sender, instance, **kwargs):
    _object_permission_event(AuditAction.OBJECT_PERMISSION_REVOKED, instance)


def _audited_bulk_create(model):
    """guardian's bulk grants (a queryset of objects, a list of users) use bulk_create, which
    sends no signal: wrap that manager's bulk_create so each new grant is audited too."""
    manager = model.objects
    original = manager.bulk_create
    holder = "user" if any(f.name == "user" for f in model._meta.fields) else "group"

    def bulk_create(objs, *args, **kwargs):
        objs = list(objs)
        fresh = objs
        if kwargs.get("ignore_conflicts"):
            fresh = [obj for obj in objs if not model.objects.filter(
                permission_id=obj.permission_id, content_type_id=obj.content_type_id, object_pk=obj.object_pk,
                **{f"{holder}_id": getattr(obj, f"{holder}_id")}).exists()]
        result = original(objs, *args, **kwargs)
        for obj in fresh:
            _object_permission_event(AuditAction.OBJECT_PERMISSION_GRANTED, obj)
        return result

    bulk_create.audited = True
    if not getattr(original, "audited", False):
        manager.bulk_create = bulk_create


def connect() -> None:
    """Connect every receiver (from ``ComplianceConfig.ready``)."""
    User = get_user_model()
    uid = "compliance.audit"
    pre_save.connect(_remember_user, sender=User, dispatch_uid=f"{uid}.user.pre")
    post_save.connect(_audit_user_saved, sender=User, dispatch_uid=f"{uid}.user.post")
    pre_delete.connect(_audit_user_deleted, sender=User, dispatch_uid=f"{uid}.user.delete")
    pre_save.connect(_remember_group, sender=Group, dispatch_uid=f"{uid}.group.pre")
    post_save.connect(_audit_group_saved, sender=Group, dispatch_uid=f"{uid}.group.post")
    pre_delete.connect(_audit_group_deleted, sender=Group, dispatch_uid=f"{uid}.group.delete")
    for through, forward, reverse_name in (
        (User.groups.through, AuditAction.USER_GROUPS_CHANGED, AuditAction.GROUP_MEMBERS_CHANGED),
        (User.user_permissions.through, AuditAction.USER_PERMISSIONS_CHANGED, AuditAction.PERMISSION_USERS_CHANGED),
        (Group.permissions.through, AuditAction.GROUP_PERMISSIONS_CHANGED, AuditAction.PERMISSION_GROUPS_CHANGED),
    ):
        m2m_changed.connect(_m2m_receiver(forward, reverse_name), sender=through, weak=False,
                            dispatch_uid=f"{uid}.m2m.{through.__name__}")
    for model in (get_user_obj_perms_model(), get_group_obj_perms_model()):
        post_save.connect(_audit_object_permission_saved, sender=model, dispatch_uid=f"{uid}.{model.__name__}.post")
        post_delete.connect(_audit_object_permission_deleted, sender=model,
                            dispatch_uid=f"{uid}.{model.__name__}.delete")
        _audited_bulk_create(model)
