import os

from django.http import HttpResponse
from django.urls import path

release = os.environ.get("DEPLOY_RELEASE_ID", "dev")


def hello(request):
    return HttpResponse(f"hello from {release}\n", content_type="text/plain")


urlpatterns = [path("", hello)]
