"""Service apps in the 0.6 service stand-in: getServiceApp and getServiceApps (public calls), and adding an
app from its spec (an admin call here; the service's addServiceApp takes the owner's GitHub sign-in)."""

from __future__ import annotations

from ...protocol.v06.models import AppSpecification, GetServiceAppRequest, GetServiceAppsRequest
from .service import Caller, ServiceError, ServiceStandIn


def add_service_app(stand_in: ServiceStandIn, service_name: str, specification: AppSpecification,
                    specification_uri: str = "", specification_commit: str = "") -> dict:
    """Add (or replace) the app named by its spec. The spec is kept as it was given: a parameter without
    `defaultValue` is one that jobs must set."""
    stand_in.service(service_name)
    app = {
        "serviceName": service_name,
        "appName": specification.name,
        "appSpecificationUri": specification_uri,
        "appSpecificationCommit": specification_commit,
        "appSpecification": specification.model_dump(mode="json", exclude_unset=True),
    }
    stand_in.store.put_service_app(app)
    return app


def get_service_app(stand_in: ServiceStandIn, request: GetServiceAppRequest, caller: Caller) -> dict:
    app = stand_in.store.service_app(request.serviceName, request.appName)
    if app is None:
        raise ServiceError(404, "App not found")
    return {"type": "getServiceAppResponse", "serviceApp": app}


def get_service_apps(stand_in: ServiceStandIn, request: GetServiceAppsRequest, caller: Caller) -> dict:
    if request.appName and request.serviceName:
        raise ServiceError(400, "Cannot specify both appName and serviceName in request")
    if request.appName:
        apps = stand_in.store.service_apps(app_name=request.appName)
    elif request.serviceName:
        apps = stand_in.store.service_apps(service_name=request.serviceName)
    else:
        raise ServiceError(400, "Must specify either appName or serviceName in request")
    return {"type": "getServiceAppsResponse", "serviceApps": apps}
