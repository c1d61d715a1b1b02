from django.urls import path

from backups import views

app_name = "backups"

urlpatterns = [
    path("artifacts/", views.artifact_list, name="artifact-list"),
    path("artifacts/<uuid:pk>/", views.artifact_detail, name="artifact-detail"),
    path("artifacts/<uuid:pk>/delete", views.artifact_delete_request, name="artifact-delete"),
    path("artifacts/<uuid:pk>/rewrap", views.artifact_rewrap, name="artifact-rewrap"),
    path("approvals/<int:pk>/approve", views.approval_approve, name="approval-approve"),
    path("approvals/<int:pk>/reject", views.approval_reject_view, name="approval-reject"),
    path("systems/", views.system_list, name="system-list"),
    path("systems/new", views.system_edit, name="system-create"),
    path("systems/<int:pk>/", views.system_detail, name="system-detail"),
    path("systems/<int:pk>/edit", views.system_edit, name="system-edit"),
    path("systems/<int:pk>/backups", views.system_backup, name="system-backup"),
    path("systems/<int:pk>/continuous/check", views.system_continuous_check, name="system-continuous-check"),
    path("locations/", views.location_list, name="location-list"),
    path("locations/new", views.location_edit, name="location-create"),
    path("locations/<int:pk>/edit", views.location_edit, name="location-edit"),
    path("backups/runs/<uuid:pk>/", views.run_detail, name="run-detail"),
    path("backups/runs/<uuid:pk>/progress", views.run_progress, name="run-progress"),
    path("backups/inventory", views.inventory_start, name="inventory-start"),
    path("backups/inventory/<uuid:pk>/", views.inventory_detail, name="inventory-detail"),
    path("backups/keys/", views.key_list, name="key-list"),
    path("backups/keys/rotate", views.key_rotate, name="key-rotate"),
]
