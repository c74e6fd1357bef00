"""The watch caches of a namespace (`ResourceCache`): one list, then the stream of changes from the list's
resourceVersion; a 410 Gone (or an ERROR event) lists again, any other break resumes where it was. The stream
is a scripted stand-in of `kubernetes.watch.Watch`; the cache's loop runs in the test's own thread."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from kubernetes.client.rest import ApiException

from dendro_prefect.workers.kubernetes import namespace_watch as k8s_watch
from dendro_prefect.workers.kubernetes.namespace_watch import SELECTOR, ResourceCache
from tests.unit.fakes import StaticWatch, k8s_pod


def item(name: str, version: str):
    return SimpleNamespace(metadata=SimpleNamespace(name=name, resource_version=version))


class Lister:
    """The namespace's list call: each call returns the next listing."""

    def __init__(self, *listings: tuple[list, str]) -> None:
        self.listings = list(listings)
        self.calls: list[tuple[str, str]] = []

    def __call__(self, namespace: str, label_selector: str = "", **_):
        self.calls.append((namespace, label_selector))
        items, version = self.listings.pop(0) if len(self.listings) > 1 else self.listings[0]
        return SimpleNamespace(items=items, metadata=SimpleNamespace(resource_version=version))


@pytest.fixture
def streams(monkeypatch):
    """Scripted watch streams: each `stream()` call plays the next script (events, or an exception to raise);
    when none is left the cache is stopped, which ends its loop."""
    scripts: list = []
    started_from: list = []
    caches: list[ResourceCache] = []

    class ScriptedWatch:
        def stream(self, function, namespace, label_selector, resource_version, timeout_seconds):
            started_from.append(resource_version)
            if not scripts:
                caches[0].stop()
                return
            script = scripts.pop(0)
            if isinstance(script, Exception):
                raise script
            yield from script

        def stop(self):
            pass

    monkeypatch.setattr(k8s_watch.watch, "Watch", ScriptedWatch)
    monkeypatch.setattr(k8s_watch, "RETRY_SEC", 0.0)
    return SimpleNamespace(scripts=scripts, started_from=started_from, caches=caches)


def run(streams, lister: Lister) -> ResourceCache:
    cache = ResourceCache(lister, "lab", "jobs", watch_timeout_sec=1)
    streams.caches.append(cache)
    cache._run()
    return cache


def test_the_cache_lists_our_objects_then_applies_each_change_of_the_stream(streams):
    streams.scripts.append([
        {"type": "ADDED", "object": item("c", "11")},
        {"type": "MODIFIED", "object": item("a", "12")},
        {"type": "DELETED", "object": item("b", "13")},
    ])
    lister = Lister(([item("a", "5"), item("b", "6")], "10"))
    cache = run(streams, lister)
    assert lister.calls == [("lab", SELECTOR)] and SELECTOR == "app.kubernetes.io/managed-by=dendro-prefect"
    assert sorted(o.metadata.name for o in cache.values()) == ["a", "c"]
    assert cache.get("a").metadata.resource_version == "12" and cache.get("b") is None
    assert streams.started_from == ["10", "13"]  # the stream resumes from the last version it saw
    assert cache.lists == 1 and cache.wait_synced(0)


@pytest.mark.parametrize("gone", [ApiException(status=410, reason="Gone"), [{"type": "ERROR", "object": item("", "")}]],
                         ids=["410 Gone", "ERROR event"])
def test_a_history_the_server_no_longer_has_makes_the_cache_list_again(streams, gone):
    streams.scripts.append(gone)
    lister = Lister(([item("a", "5")], "10"), ([item("b", "21")], "30"))
    cache = run(streams, lister)
    assert cache.lists == 2 and [o.metadata.name for o in cache.values()] == ["b"]
    assert streams.started_from == ["10", "30"]


@pytest.mark.parametrize("broken", [ApiException(status=500, reason="Internal Server Error"),
                                    ConnectionResetError("connection reset by peer")], ids=["500", "reset"])
def test_a_broken_stream_resumes_where_it_was_without_listing_again(streams, broken):
    streams.scripts += [[{"type": "ADDED", "object": item("c", "11")}], broken]
    cache = run(streams, Lister(([item("a", "5")], "10")))
    assert cache.lists == 1 and streams.started_from == ["10", "11", "11"]
    assert sorted(o.metadata.name for o in cache.values()) == ["a", "c"]


def test_the_pods_of_a_job_are_its_own_newest_first():
    watch = StaticWatch()  # NamespaceWatch's own pods_of over caches the test fills
    watch.put(k8s_pod("dendro-a", "Failed", age_sec=30, name="a-old"), k8s_pod("dendro-a", "Running", name="a-new"),
              k8s_pod("dendro-b", "Running", name="b"))
    assert [p.metadata.name for p in watch.pods_of("dendro-a")] == ["a-new", "a-old"]
    assert watch.pods_of("dendro-c") == []
