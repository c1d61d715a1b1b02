"""Pages of the contact roster: the roster, add/edit, mark verified, CSV and vCard exports."""

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from compliance.alerts import can_acknowledge
from compliance.contacts import (
    EDITABLE_FIELDS,
    contact_create,
    contact_update,
    contact_verify,
    contacts_export,
    contacts_roster,
    is_due_for_review,
    review_cutoff,
)
from compliance.forms import ContactForm
from compliance.models import Alert, Contact
from drpanel import clock
from drpanel.permissions import Cap, capability_required, has_cap


@capability_required(Cap.VIEW_PANEL)
@require_GET
def contact_list(request):
    today = clock.today()
    contacts = list(contacts_roster())
    for contact in contacts:
        contact.review_due = is_due_for_review(contact, today)
    levels = [(label, [c for c in contacts if c.level == value]) for value, label in Contact.Level.choices]
    return render(request, "compliance/contact_list.html", {
        "levels": levels,
        "contacts": contacts,
        "due": [c for c in contacts if c.review_due],
        "cutoff": review_cutoff(today),
        "can_edit": has_cap(request.user, Cap.EDIT_CONTACTS),
        "open_alerts": Alert.objects.filter(state=Alert.State.OPEN).count(),
        "can_acknowledge": can_acknowledge(request.user),
    })


def _save(request, form, contact=None):
    fields = {name: form.cleaned_data[name] for name in EDITABLE_FIELDS}
    try:
        if contact is None:
            return contact_create(actor=request.user, **fields)
        return contact_update(actor=request.user, contact=contact, **fields)
    except ValidationError as exc:
        form.add_error(None, exc)
        return None


@capability_required(Cap.EDIT_CONTACTS)
@require_http_methods(["GET", "POST"])
def contact_create_view(request):
    form = ContactForm(request.POST or None, initial={"level": Contact.Level.L1, "active": True})
    if request.method == "POST" and form.is_valid():
        contact = _save(request, form)
        if contact is not None:
            messages.success(request, f"{contact.name} added to the roster.")
            return redirect("compliance:contact-list")
    return render(request, "compliance/contact_edit.html", {"form": form, "contact": None},
                  status=400 if form.errors else 200)


@capability_required(Cap.EDIT_CONTACTS)
@require_http_methods(["GET", "POST"])
def contact_edit(request, pk: int):
    contact = get_object_or_404(Contact, pk=pk)
    # The form works on a copy: the service compares against the stored row.
    form = ContactForm(request.POST or None, instance=Contact.objects.get(pk=pk))
    if request.method == "POST" and form.is_valid():
        saved = _save(request, form, contact)
        if saved is not None:
            messages.success(request, f"{saved.name} saved.")
            return redirect("compliance:contact-list")
    return render(request, "compliance/contact_edit.html", {
        "form": form, "contact": contact, "review_due": is_due_for_review(contact),
    }, status=400 if form.errors else 200)


@capability_required(Cap.EDIT_CONTACTS)
@require_POST
def contact_verify_view(request, pk: int):
    contact = contact_verify(actor=request.user, contact=get_object_or_404(Contact, pk=pk))
    messages.success(request, f"{contact.name} marked verified on {contact.last_verified_on:%Y-%m-%d}.")
    return redirect(f"{reverse('compliance:contact-list')}#contact-{pk}")


@capability_required(Cap.VIEW_PANEL)
@require_GET
def contact_export(request, fmt: str):
    formats = {"csv": "csv", "vcf": "vcard"}
    if fmt not in formats:
        raise Http404
    content, filename, content_type = contacts_export(actor=request.user, fmt=formats[fmt])
    response = HttpResponse(content, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
