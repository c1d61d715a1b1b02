"""Pages of the monthly certification: the months, one month's record, signing, printing, the bundle."""

from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from compliance.certification_bundle import bundle_response
from compliance.certification_record import (
    CertificationError,
    certification_assemble,
    check_period,
    content_hash,
    parse_period,
)
from compliance.certifications import (
    certification_history,
    certification_months,
    certification_sign,
    current_certification,
    may_sign,
    monthly_signoffs_open,
)
from drpanel.permissions import Cap, Denied, capability_required, has_cap, recently_reauthenticated, record_denial


def _period(period: str) -> tuple[int, int]:
    try:
        year, month = parse_period(period)
        check_period(year, month)
    except CertificationError:
        raise Http404("No such month.") from None
    return year, month


@capability_required(Cap.VIEW_PANEL)
@require_GET
def certification_list(request):
    return render(request, "compliance/certification_list.html", {
        "months": certification_months(), "can_sign": has_cap(request.user, Cap.SIGN_CERTIFICATION)})


def _context(request, period: str) -> dict:
    year, month = _period(period)
    cert = current_certification(year, month)
    record = cert.record if cert else certification_assemble(year=year, month=month)
    allowed, why = may_sign(request.user, year, month)
    return {
        "period": period, "year": year, "month": month, "cert": cert, "record": record,
        "hash": cert.content_hash if cert else content_hash(record),
        "history": certification_history(year, month),
        "can_sign": allowed, "sign_refusal": why if has_cap(request.user, Cap.SIGN_CERTIFICATION) else "",
        "can_download": has_cap(request.user, Cap.READ_AUDIT) and cert is not None,
        "reauthenticated": recently_reauthenticated(request),
        "signoffs_open": monthly_signoffs_open(year, month),
    }


@capability_required(Cap.VIEW_PANEL)
@require_GET
def certification_detail(request, period):
    return render(request, "compliance/certification_detail.html", _context(request, period))


@capability_required(Cap.VIEW_PANEL)
@require_GET
def certification_print(request, period):
    return render(request, "compliance/certification_print.html", _context(request, period))


@capability_required(Cap.SIGN_CERTIFICATION)
@require_POST
def certification_sign_view(request, period):
    year, month = _period(period)
    if request.POST.get("confirm") != "yes":
        messages.error(request, "Tick the confirmation: you certify this record as it stands.")
        return redirect("compliance:certification-detail", period)
    try:
        cert = certification_sign(actor=request.user, year=year, month=month,
                                  attestation=request.POST.get("attestation", ""),
                                  password=request.POST.get("password", ""), reason=request.POST.get("reason", ""),
                                  request=request)
    except CertificationError as exc:
        messages.error(request, str(exc))
        return redirect("compliance:certification-detail", period)
    except Denied as exc:
        # A mistyped password at the end of a long review is a form error, not a dead end; it is
        # audited as the refusal it is (the API answers 403).
        if exc.need != "re-authentication":
            raise
        record_denial(request, exc)
        messages.error(request, exc.message)
        return redirect("compliance:certification-detail", period)
    messages.success(request, f"Certification {cert.label} signed; content hash {cert.content_hash}.")
    return redirect("compliance:certification-detail", period)


@capability_required(Cap.READ_AUDIT)
@require_GET
def certification_bundle_view(request, period):
    year, month = _period(period)
    cert = current_certification(year, month)
    if cert is None:
        raise Http404("This month is not signed: there is no bundle yet.")
    return bundle_response(actor=request.user, cert=cert, request=request)
