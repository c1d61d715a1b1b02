from django.urls import path

from compliance import views

app_name = "compliance"

urlpatterns = [
    path("checklists/", views.checklist_today, name="checklist-today"),
    path("contacts/", views.contact_list, name="contact-list"),
    path("audit/", views.audit_list, name="audit-list"),
    path("audit/events/<int:seq>/", views.audit_detail, name="audit-detail"),
    path("audit/export", views.audit_export, name="audit-export"),
    path("audit/public-key.pem", views.audit_public_key, name="audit-public-key"),
    path("audit/verify", views.audit_verify, name="audit-verify"),
]
