from django.urls import path

from backups import views

app_name = "backups"

urlpatterns = [
    path("artifacts/", views.artifact_list, name="artifact-list"),
]
