"""The control plane: central store, admin API and the sync stream to gateway instances."""

from smartflow.control.app import (
    RunningControlPlane,
    create_control_plane_app,
    start_control_plane,
)
from smartflow.control.settings import ControlPlaneSettings

__all__ = [
    "ControlPlaneSettings",
    "RunningControlPlane",
    "create_control_plane_app",
    "start_control_plane",
]
