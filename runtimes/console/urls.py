from django.urls import path

from runtimes.console import views

app_name = "console"
urlpatterns = [
    path("", views.console, name="index"),
    path("attention/", views.attention, name="attention"),
    path("fleet/", views.fleet, name="fleet"),
    path("runtimes/<int:pk>/live/", views.runtime_live, name="runtime-live"),
]
