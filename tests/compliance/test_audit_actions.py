"""The one list of audit actions: the writer refuses any other, the code writes only those, the docs list them."""

import ast
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import transaction
from django.urls import reverse

from compliance.audit import AuditAction, audit_record
from compliance.audit.actions import DOC_PATH, UnknownAuditAction, action_choices, actions_markdown
from compliance.models import AuditEvent
from tests.audit_support import ROOT

pytestmark = pytest.mark.django_db
CODE = ("backups", "restores", "compliance", "drpanel")


def test_the_writer_refuses_an_action_that_is_not_declared():
    before = AuditEvent.objects.count()
    with pytest.raises(UnknownAuditAction, match="unknown audit action 'restore.exploded'"), transaction.atomic():
        audit_record(actor=None, action="restore.exploded")
    assert AuditEvent.objects.count() == before


def test_the_writer_takes_a_member_or_its_value_and_stores_the_value():
    with transaction.atomic():
        member = audit_record(actor=None, action=AuditAction.AUDIT_VERIFIED)
        text = audit_record(actor=None, action="audit.verified")
    stored = AuditEvent.objects.filter(pk__in=[member.pk, text.pk]).values_list("action", flat=True)
    assert list(stored) == ["audit.verified", "audit.verified"]
    assert type(AuditEvent.objects.get(pk=member.pk).action) is str


def test_every_action_is_a_lowercase_noun_dot_verb_with_a_description():
    for member in AuditAction:
        noun, _, verb = member.value.partition(".")
        assert noun and verb and member.value == member.value.lower(), member
        assert member.description.strip(), member


def _action_arguments():
    """Every ``action=`` given to ``audit_record`` in the panel's code (the AST node), with where."""
    for path in sorted(p for app in CODE for p in (ROOT / app).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            name = getattr(node, "func", None) and getattr(node.func, "id", getattr(node.func, "attr", None))
            if isinstance(node, ast.Call) and name == "audit_record":
                for keyword in node.keywords:
                    if keyword.arg == "action":
                        yield keyword.value, f"{path.relative_to(ROOT)}:{node.lineno}"


def test_the_code_names_its_actions_by_member_and_every_member_it_names_exists():
    found = list(_action_arguments())
    assert len(found) > 100, "the scan found (almost) no audit_record call: it no longer sees the code"
    literals = [where for value, where in found if isinstance(value, ast.Constant)]
    assert literals == [], "write AuditAction.<MEMBER>, not a string"
    named = [(value.attr, where) for value, where in found
             if isinstance(value, ast.Attribute) and getattr(value.value, "id", None) == "AuditAction"]
    assert len(named) > 50
    assert [where for member, where in named if member not in AuditAction.__members__] == []


def test_the_docs_list_every_action_and_are_up_to_date():
    text = (ROOT / DOC_PATH).read_text()
    assert text == actions_markdown(), f"run `python manage.py audit_actions_doc` to update {DOC_PATH}"
    assert all(f"| `{member.value}` | {member.description} |" in text for member in AuditAction)
    call_command("audit_actions_doc", "--check")


def test_the_docs_command_fails_when_the_file_is_out_of_date(settings, tmp_path):
    settings.BASE_DIR = tmp_path
    with pytest.raises(CommandError, match="out of date"):
        call_command("audit_actions_doc", "--check")
    call_command("audit_actions_doc")
    assert Path(tmp_path / DOC_PATH).read_text() == actions_markdown()


def test_the_audit_filter_offers_every_action(clients):
    page = clients["auditor"].get(reverse("compliance:audit-list"))
    assert page.context["actions"] == action_choices()
    html = page.content.decode()
    assert all(f'<option value="{member.value}">' in html for member in AuditAction)
