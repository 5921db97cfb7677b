"""The fleet tests' helpers: a real nats-server with JetStream on 127.0.0.1, the shipper and
collector as the processes users run, and what a central capture holds. Imported by name from the
tests in this folder (a module of its own: ``conftest`` is a name every test folder has)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import trio

from wirecap.capture import CaptureError, open_capture

#: Hang guard for one wait in these tests (never a timing assertion).
HANG_GUARD = 90


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NatsServer:
    """nats-server -js on 127.0.0.1, which a test can kill and start again on the same port and
    store."""

    def __init__(self, store: Path, extra: list[str]) -> None:
        self.port = free_port()
        self.store = store
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> None:
        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        command = [binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store)]
        self.process = subprocess.Popen(
            [*command, *self.extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        with trio.fail_after(HANG_GUARD):
            while True:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", self.port)
                except OSError:
                    await trio.sleep(0.05)
                    continue
                await stream.aclose()
                return

    async def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            await trio.to_thread.run_sync(self.process.wait)


def nats_binary() -> str | None:
    return shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if os.path.exists("/usr/sbin/nats-server") else None
    )


class Child:
    """``python -m wirecap ARGS`` in a process of its own, stopped by signal."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.args = args
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Child:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "wirecap", *self.args], stdout=log, stderr=log
            )
        return self

    async def stop(self, signum: int = signal.SIGTERM) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            with trio.fail_after(HANG_GUARD):
                return await trio.to_thread.run_sync(self.process.wait, abandon_on_cancel=True)
        except trio.TooSlowError:
            self.process.kill()
            raise AssertionError(f"not stopped after {HANG_GUARD}s:\n{self.output()}") from None

    def output(self) -> str:
        return self.log.read_text()


def exchange_ids(*targets: Path) -> list[str]:
    """Every exchange id in the captures at ``targets``, once per time it is there."""
    with open_capture(*targets) as capture:
        return [exchange.id for exchange in capture.exchanges()]


async def wait_for_ids(central: Path, expected: set[str]) -> None:
    """Until the central capture holds every one of ``expected`` (hang guard only)."""
    with trio.fail_after(HANG_GUARD):
        while True:
            if central.is_dir() and any(central.glob("*.cbor.zst")):
                try:
                    found = await trio.to_thread.run_sync(exchange_ids, central)
                except CaptureError:  # a file replaced while it was listed: look again
                    found = []
                if expected <= set(found):
                    return
            await trio.sleep(0.2)
