from django.urls import path, re_path

from compliance import (
    views,
    views_alerts,
    views_certifications,
    views_checklists,
    views_contacts,
    views_escalation,
    views_notifications,
)

app_name = "compliance"

urlpatterns = [
    path("checklists/", views_checklists.checklist_today, name="checklist-today"),
    path("contacts/", views_contacts.contact_list, name="contact-list"),
    path("audit/", views.audit_list, name="audit-list"),
    path("audit/events/<int:seq>/", views.audit_detail, name="audit-detail"),
    path("audit/export", views.audit_export, name="audit-export"),
    path("audit/public-key.pem", views.audit_public_key, name="audit-public-key"),
    path("audit/verify", views.audit_verify, name="audit-verify"),
    # the contact roster
    path("contacts/new", views_contacts.contact_create_view, name="contact-create"),
    path("contacts/<int:pk>/edit", views_contacts.contact_edit, name="contact-edit"),
    path("contacts/<int:pk>/verify", views_contacts.contact_verify_view, name="contact-verify"),
    path("contacts/export.<str:fmt>", views_contacts.contact_export, name="contact-export"),
    # notification channels and deliveries
    path("contacts/notifications/", views_notifications.notification_list, name="notification-list"),
    path("contacts/notifications/channels/<int:pk>/active", views_notifications.channel_active_view,
         name="channel-active"),
    path("contacts/notifications/channels/<int:pk>/test", views_notifications.channel_test_view,
         name="channel-test"),
    # checklists
    path("checklists/evaluate", views_checklists.checklist_evaluate_view, name="checklist-evaluate"),
    path("checklists/history/", views_checklists.checklist_history, name="checklist-history"),
    path("checklists/items/<int:pk>/tick", views_checklists.checklist_item_tick_view, name="checklist-item-tick"),
    path("checklists/items/<int:pk>/untick", views_checklists.checklist_item_untick_view,
         name="checklist-item-untick"),
    path("checklists/templates/", views_checklists.checklist_template_list, name="checklist-template-list"),
    path("checklists/templates/items/<int:pk>/edit", views_checklists.checklist_template_item_edit,
         name="checklist-template-item-edit"),
    path("checklists/templates/<str:cadence>/add", views_checklists.checklist_template_item_add_view,
         name="checklist-template-item-add"),
    path("checklists/<str:cadence>/<str:label>/", views_checklists.checklist_period_detail,
         name="checklist-period-detail"),
    # the health score
    # alerts
    path("alerts/", views_alerts.alert_list, name="alert-list"),
    path("alerts/<int:pk>/", views_alerts.alert_detail, name="alert-detail"),
    path("alerts/<int:pk>/acknowledge", views_alerts.alert_acknowledge_view, name="alert-acknowledge"),
    path("alerts/ack/<str:token>", views_alerts.alert_ack_link, name="alert-ack-link"),
    path("incidents/<uuid:pk>/acknowledge", views_escalation.incident_acknowledge_view, name="incident-acknowledge"),
    path("incidents/ack/<str:token>", views_escalation.incident_ack_link, name="incident-ack-link"),
    # the monthly certification
    path("certifications/", views_certifications.certification_list, name="certification-list"),
    re_path(r"^certifications/(?P<period>\d{4}-\d{2})/$", views_certifications.certification_detail,
            name="certification-detail"),
    re_path(r"^certifications/(?P<period>\d{4}-\d{2})/print$", views_certifications.certification_print,
            name="certification-print"),
    re_path(r"^certifications/(?P<period>\d{4}-\d{2})/sign$", views_certifications.certification_sign_view,
            name="certification-sign"),
    re_path(r"^certifications/(?P<period>\d{4}-\d{2})/bundle\.zip$", views_certifications.certification_bundle_view,
            name="certification-bundle"),
]
