from django.urls import path

from restores import views

app_name = "restores"

urlpatterns = [
    path("restores/", views.run_list, name="run-list"),
    path("restores/targets/", views.target_list, name="target-list"),
    path("restores/targets/new", views.target_create, name="target-create"),
    path("restores/targets/<int:pk>/", views.target_detail, name="target-detail"),
    path("restores/targets/<int:pk>/edit", views.target_edit, name="target-edit"),
    path("restores/targets/<int:pk>/rights/grant", views.target_right_grant, name="target-right-grant"),
    path("restores/targets/<int:pk>/rights/revoke", views.target_right_revoke, name="target-right-revoke"),
]
