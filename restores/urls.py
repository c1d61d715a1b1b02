from django.urls import path

from restores import views

app_name = "restores"

urlpatterns = [
    path("restores/", views.run_list, name="run-list"),
]
