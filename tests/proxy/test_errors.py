"""Connect failures in words: a host name that does not resolve says so (not "Unknown error -2")."""

from __future__ import annotations

import socket

import httpx
from resolver import UNRESOLVABLE, unresolvable_names

from wirecap.proxy.errors import resolver_failure, resolver_failure_in


def test_a_resolver_error_is_named():
    error = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert resolver_failure(error) == "the host name does not resolve (Name or service not known)"


def test_other_errors_are_left_to_the_caller():
    assert resolver_failure(ConnectionRefusedError(111, "Connection refused")) is None
    assert resolver_failure_in(RuntimeError("x")) is None


def test_a_resolver_error_is_found_behind_the_error_raised_from_it():
    outer = RuntimeError("cannot connect to nowhere.invalid:80: Unknown error -2")
    outer.__cause__ = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert resolver_failure_in(outer) == (
        "the host name does not resolve (Name or service not known)"
    )


async def test_proxy_502_says_the_upstream_host_does_not_resolve(start_proxy):
    with unresolvable_names():
        proxy = await start_proxy(upstream=f"http://{UNRESOLVABLE}:80/")
        async with httpx.AsyncClient() as client:
            r = await client.post(f"{proxy.url}/v1/chat/completions", json={"model": "m"})
    assert r.status_code == 502
    message = r.json()["error"]["message"]
    assert f"{UNRESOLVABLE}:80" in message and "does not resolve" in message, message
