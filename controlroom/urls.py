from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from runtimes.intake.api import api

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/", admin.site.urls),
    path("console/", include("runtimes.console.urls")),
    path("api/v1/", api.urls),
]
