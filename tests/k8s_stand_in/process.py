"""Container processes: each runs in its own session (so its whole process group can be signalled), its stdout
and stderr are pumped by threads into a CRI-format log file (`<RFC3339Nano> <stream> <F|P> <text>`, as the kubelet
writes them, which is what gives logs their timestamps), and its group's RSS is read from /proc."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

from .containers import MARKER_ENV, ProcessSpec, StartError
from .meta import rfc3339_nano

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class ContainerProcess:
    def __init__(self, spec: ProcessSpec, log_path: Path, pid_dir: Path, pod_uid: str) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(log_path, "ab")
        self.lock = threading.Lock()
        try:
            self.proc = subprocess.Popen(spec.argv, cwd=spec.cwd, env=spec.env, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        except OSError as error:
            self.log.close()
            raise StartError(f'failed to create containerd task: exec: "{spec.argv[0]}": {error.strerror}') from error
        self.pgid = self.proc.pid
        pid_dir.mkdir(parents=True, exist_ok=True)
        (pid_dir / str(self.pgid)).write_text(pod_uid)
        self.pumps = [threading.Thread(target=self._pump, args=(pipe, name), daemon=True)
                      for pipe, name in ((self.proc.stdout, "stdout"), (self.proc.stderr, "stderr"))]
        for pump in self.pumps:
            pump.start()

    def _pump(self, pipe, stream: str) -> None:
        fd = pipe.fileno()
        while chunk := os.read(fd, 65536):
            pieces = chunk.split(b"\n")
            lines = [(piece, b"F") for piece in pieces[:-1]] + ([(pieces[-1], b"P")] if pieces[-1] else [])
            with self.lock:
                if self.log.closed:
                    break
                for text, tag in lines:
                    self.log.write(f"{rfc3339_nano()} {stream} ".encode() + tag + b" " + text + b"\n")
                self.log.flush()
        pipe.close()

    def poll(self) -> int | None:
        return self.proc.poll()

    def exit_code(self) -> int:
        code = self.proc.returncode
        return code if code >= 0 else 128 - code

    def drained(self) -> bool:
        return not any(pump.is_alive() for pump in self.pumps)

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def close(self, pid_dir: Path) -> None:
        """After the main process exited: kill what is left of the group (a container dies with its PID 1)."""
        self.signal(signal.SIGKILL)
        self.proc.poll()
        with self.lock:
            self.log.close()
        (pid_dir / str(self.pgid)).unlink(missing_ok=True)


def scan(pgids: set[int]) -> dict[int, tuple[list[int], int]]:
    """For each process group asked about: its live (non-zombie) PIDs and their summed RSS in bytes."""
    found: dict[int, tuple[list[int], int]] = {}
    if not pgids:
        return found
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                fields = handle.read().rpartition(b")")[2].split()
        except OSError:
            continue
        pgrp = int(fields[2])
        if pgrp in pgids and fields[0] != b"Z":
            pids, rss = found.get(pgrp, ([], 0))
            found[pgrp] = (pids + [int(entry.name)], rss + int(fields[21]) * PAGE_SIZE)
    return found


def kill_leftovers(pid_dir: Path) -> list[int]:
    """SIGKILL every live process of a recorded group that carries the stand-in's marker; returns their PIDs."""
    pgids = {int(path.name) for path in pid_dir.glob("*") if path.name.isdigit()} if pid_dir.is_dir() else set()
    killed = []
    for pgid, (pids, _) in scan(pgids).items():
        for pid in pids:
            try:
                if f"{MARKER_ENV}=".encode() in Path(f"/proc/{pid}/environ").read_bytes():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            except OSError:
                pass
    for path in pid_dir.glob("*") if pid_dir.is_dir() else []:
        path.unlink(missing_ok=True)
    return killed
