"""Public model names to ordered deployments."""

from __future__ import annotations

from collections.abc import Iterable

from smartflow.core.errors import NotFound
from smartflow.dialects._validate import excerpt
from smartflow.providers.base import Deployment

__all__ = ["Router"]


class Router:
    """Resolve a public model name to the deployments that serve it, in fallback order."""

    def __init__(self, routes: dict[str, list[Deployment]]) -> None:
        self._routes = routes

    @property
    def models(self) -> Iterable[str]:
        return self._routes.keys()

    def deployments(self, model: str) -> list[Deployment]:
        route = self._routes.get(model)
        if route is None:
            available = ", ".join(sorted(self._routes)[:20]) or "none"
            raise NotFound(
                f"The model {excerpt(model)} does not exist or is not served by this gateway. "
                f"Available models: {available}. GET /v1/models lists them.",
                param="model",
            )
        return route
