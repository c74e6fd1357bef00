"""Pod logs from the CRI-format file the kubelet writes: plain or with timestamps, tailLines, sinceSeconds/
sinceTime, limitBytes, stream, and follow=true (streamed until the container has ended). A pod whose container has
not started answers 400, like Kubernetes ("container ... is waiting to start")."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path
from typing import AsyncIterator

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from .errors import bad_request
from .kubelet import log_path
from .podstatus import first_state

router = APIRouter()
POLL_SECONDS = 0.1
WAITING_MESSAGES = {"ErrImagePull": "image can't be pulled", "ImagePullBackOff": "trying and failing to pull image"}


def parse_records(data: bytes) -> tuple[list[tuple[str, str, bool, bytes]], bytes]:
    """Complete records (timestamp, stream, is_full_line, text) and the unfinished remainder."""
    records = []
    *complete, rest = data.split(b"\n")
    for raw in complete:
        parts = raw.split(b" ", 3)
        if len(parts) == 4:
            records.append((parts[0].decode(), parts[1].decode(), parts[2] == b"F", parts[3]))
    return records, rest


def epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp[:26].rstrip("Z") + "+00:00").timestamp()


class LogFormatter:
    """Joins partial records into lines and applies the query's filters."""

    def __init__(self, timestamps: bool, since: float | None, stream: str) -> None:
        self.timestamps, self.since, self.stream = timestamps, since, stream.lower()
        self.pending: dict[str, tuple[str, bytes]] = {}

    def lines(self, records: list[tuple[str, str, bool, bytes]]) -> list[bytes]:
        out = []
        for timestamp, stream, full, text in records:
            if self.stream not in ("all", stream):
                continue
            first, sofar = self.pending.pop(stream, (timestamp, b""))
            if not full:
                self.pending[stream] = (first, sofar + text)
                continue
            if self.since is not None and epoch(first) < self.since:
                continue
            out.append((first.encode() + b" " if self.timestamps else b"") + sofar + text + b"\n")
        return out

    def flush(self) -> list[bytes]:
        """Partial lines left when the container ended are shown without a newline."""
        out = [(first.encode() + b" " if self.timestamps else b"") + text for first, text in self.pending.values()]
        self.pending.clear()
        return out


def query_int(request: Request, name: str) -> int | None:
    value = request.query_params.get(name)
    try:
        return None if value is None else int(value)
    except ValueError:
        raise bad_request(f"{name}: Invalid value: {value!r}") from None


def check_started(pod: dict, container: str | None) -> None:
    names = [c["name"] for c in pod["spec"]["containers"]]
    pod_name = pod["metadata"]["name"]
    if container and container not in names:
        raise bad_request(f"container {container} is not valid for pod {pod_name}")
    state = first_state(pod)
    if "running" not in state and "terminated" not in state:
        reason = (state.get("waiting") or {}).get("reason", "ContainerCreating")
        raise bad_request(f'container "{container or names[0]}" in pod "{pod_name}" is waiting to start: '
                          f"{WAITING_MESSAGES.get(reason, reason)}")


def read_from(path: Path, offset: int) -> bytes:
    if not path.exists():
        return b""
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read()


@router.get("/api/v1/namespaces/{namespace}/pods/{name}/log")
async def pod_log(request: Request, namespace: str, name: str) -> Response:
    cluster = request.app.state.cluster
    pod = cluster.store.require("pods", namespace, name)
    query = request.query_params
    check_started(pod, query.get("container"))
    since_seconds = query_int(request, "sinceSeconds")
    since = time.time() - since_seconds if since_seconds is not None else (
        epoch(query["sinceTime"]) if query.get("sinceTime") else None)
    formatter = LogFormatter(query.get("timestamps") in ("true", "1"), since, query.get("stream") or "All")
    tail, limit = query_int(request, "tailLines"), query_int(request, "limitBytes")
    path = log_path(cluster.options, pod)
    data = read_from(path, 0)
    records, rest = parse_records(data)
    offset = len(data) - len(rest)
    lines = formatter.lines(records)
    if tail is not None:
        lines = lines[-tail:] if tail > 0 else []
    if query.get("follow") not in ("true", "1"):
        body = b"".join(lines + formatter.flush())
        return Response(body[:limit] if limit else body, media_type="text/plain")

    async def follow() -> AsyncIterator[bytes]:
        sent, position = 0, offset
        chunk = b"".join(lines)
        while True:
            if limit is not None and sent + len(chunk) >= limit:
                yield chunk[: limit - sent]
                return
            if chunk:
                yield chunk
                sent += len(chunk)
            current = cluster.store.get("pods", namespace, name)
            ended = current is None or "terminated" in first_state(current)
            data = read_from(path, position)
            records, rest = parse_records(data)
            position += len(data) - len(rest)
            chunk = b"".join(formatter.lines(records))
            if ended and not chunk:
                yield b"".join(formatter.flush())
                return
            if not chunk:
                await asyncio.sleep(POLL_SECONDS)

    return StreamingResponse(follow(), media_type="text/plain")
