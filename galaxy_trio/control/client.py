"""A client of the control API, for ``python -m galaxy_trio ctl`` and for scripts (httpx, on trio via anyio).

Every failure is a :class:`ControlClientError` with one line that says what to do: the server unreachable, the
token refused, or the library's own reason for a 4xx.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx

from ..errors import GalaxyTrioError

__all__ = ["ControlClient", "ControlClientError"]


class ControlClientError(GalaxyTrioError):
    """A control request failed; ``status`` is the HTTP status (None when the server was not reached)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ControlClient:
    """``async with ControlClient(url, token) as control: await control.devices()``."""

    def __init__(self, url: str, token: str) -> None:
        if not url.startswith(("http://", "https://")):
            raise ControlClientError(f"control URL {url!r} is not http:// or https://; give the URL `run` printed")
        self.url = url.rstrip("/") + "/"
        # No overall timeout on purpose: a waited-for task or connect takes as long as it takes (Ctrl-C stops it).
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(None, connect=10.0),
        )

    async def __aenter__(self) -> ControlClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._http.aclose()

    async def devices(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await self._call("GET", "api/devices")
        return rows

    async def device(self, device_id: str) -> dict[str, Any]:
        row: dict[str, Any] = await self._call("GET", f"api/devices/{_segment(device_id)}")
        return row

    async def connect(self, device_id: str) -> dict[str, Any]:
        row: dict[str, Any] = await self._call("POST", f"api/devices/{_segment(device_id)}/connect")
        return row

    async def disconnect(self, device_id: str) -> dict[str, Any]:
        row: dict[str, Any] = await self._call("POST", f"api/devices/{_segment(device_id)}/disconnect")
        return row

    async def task(
        self, device_id: str, request: str, *, task_id: str | None = None, task_timeout: float | None = None
    ) -> dict[str, Any]:
        """Run a task and wait for its result (the library's TaskResult, as JSON).

        ``task_timeout`` is the task's own bound, applied by the server (the result is then a ``timeout`` failure).
        """
        body: dict[str, Any] = {"device_id": device_id, "request": request}
        if task_id is not None:
            body["task_id"] = task_id
        if task_timeout is not None:
            body["timeout"] = task_timeout
        result: dict[str, Any] = await self._call("POST", "api/tasks", json=body)
        return result

    async def events(self) -> AsyncIterator[tuple[str, Any]]:
        """(event name, decoded data) for every message of the event stream, until the server ends it."""
        try:
            async with self._http.stream("GET", "api/events") as response:
                if response.status_code != 200:
                    await response.aread()
                    raise self._failure(response)
                name = "message"
                async for line in response.aiter_lines():
                    if line.startswith("event: "):
                        name = line.removeprefix("event: ")
                    elif line.startswith("data: "):
                        yield name, json.loads(line.removeprefix("data: "))
                        name = "message"
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if response.status_code >= 400:
            raise self._failure(response)
        return response.json()

    def _unreachable(self, exc: httpx.TransportError) -> ControlClientError:
        why = str(exc) or type(exc).__name__
        return ControlClientError(f"cannot reach the control server at {self.url}: {why}; is `run --control` running?")

    def _failure(self, response: httpx.Response) -> ControlClientError:
        status = response.status_code
        if status == 401:
            return ControlClientError(
                "the control server refused the token (401); give the one `run --control` printed, in"
                " $GALAXY_TRIO_CONTROL_TOKEN or the variable named by --token-env",
                status,
            )
        try:
            message = str(response.json()["error"])
        except (ValueError, KeyError, TypeError):
            message = response.text.strip()[:200] or response.reason_phrase
        return ControlClientError(message, status)


def _segment(device_id: str) -> str:
    return quote(device_id, safe="")
