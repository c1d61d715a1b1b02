from django.urls import path

from restores import views, views_incidents, views_runs

app_name = "restores"

urlpatterns = [
    path("restores/", views_runs.run_list, name="run-list"),
    path("restores/new", views_runs.run_create, name="run-create"),
    path("restores/new/point-in-time", views_runs.point_create, name="point-create"),
    path("restores/runs/<uuid:pk>/", views_runs.run_detail, name="run-detail"),
    path("restores/runs/<uuid:pk>/progress", views_runs.run_progress, name="run-progress"),
    path("restores/runs/<uuid:pk>/approve", views_runs.run_approve, name="run-approve"),
    path("restores/runs/<uuid:pk>/reject", views_runs.run_reject, name="run-reject"),
    path("restores/runs/<uuid:pk>/rollback", views_runs.run_rollback, name="run-rollback"),
    path("restores/runs/<uuid:pk>/cancel", views_runs.run_cancel, name="run-cancel"),
    path("restores/runs/<uuid:pk>/checks/<int:check_pk>/tick", views_runs.check_tick, name="check-tick"),
    path("restores/runs/<uuid:pk>/checks/refresh", views_runs.checks_refresh, name="checks-refresh"),
    path("restores/artifacts/<uuid:pk>/adopt", views_runs.artifact_adopt, name="artifact-adopt"),
    path("restores/verifications/new", views_runs.verification_create, name="verification-create"),
    path("restores/verifications/<uuid:pk>/", views_runs.verification_detail, name="verification-detail"),
    path("restores/verifications/<uuid:pk>/progress", views_runs.verification_progress,
         name="verification-progress"),
    path("restores/verifications/<uuid:pk>/cancel", views_runs.verification_cancel, name="verification-cancel"),
    path("incidents/", views_incidents.incident_list, name="incident-list"),
    path("incidents/<uuid:pk>/", views_incidents.incident_detail, name="incident-detail"),
    path("incidents/<uuid:pk>/live", views_incidents.incident_live, name="incident-live"),
    path("incidents/<uuid:pk>/steps/<int:position>/<str:verb>", views_incidents.incident_step, name="incident-step"),
    path("incidents/<uuid:pk>/close", views_incidents.incident_close, name="incident-close"),
    path("incidents/<uuid:pk>/report", views_incidents.incident_report, name="incident-report"),
    path("incidents/runbooks/", views_incidents.runbook_list, name="runbook-list"),
    path("incidents/runbooks/<str:scenario>/edit", views_incidents.runbook_edit, name="runbook-edit"),
    path("restores/targets/", views.target_list, name="target-list"),
    path("restores/targets/new", views.target_create, name="target-create"),
    path("restores/targets/<int:pk>/", views.target_detail, name="target-detail"),
    path("restores/targets/<int:pk>/edit", views.target_edit, name="target-edit"),
    path("restores/targets/<int:pk>/rights/grant", views.target_right_grant, name="target-right-grant"),
    path("restores/targets/<int:pk>/rights/revoke", views.target_right_revoke, name="target-right-revoke"),
]
