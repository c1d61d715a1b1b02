from django.urls import path

from compliance import views

app_name = "compliance"

urlpatterns = [
    path("checklists/", views.checklist_today, name="checklist-today"),
    path("contacts/", views.contact_list, name="contact-list"),
    path("audit/", views.audit_list, name="audit-list"),
]
