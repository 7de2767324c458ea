from django.urls import path

from routing.api import RoutingSimulateView

app_name = "routing"

urlpatterns = [
    path("simulate", RoutingSimulateView.as_view(), name="simulate"),
]
