"""Read what was appended to a file since the last read: how job output reaches the flow-run logs.

Backends whose jobs write to a file the worker can see (a local job directory, Slurm's output file on
a shared file system) stream it this way.
"""

from __future__ import annotations

from pathlib import Path


class FileTail:
    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        self._offset = offset
        self._partial = b""

    @property
    def position(self) -> int:
        """Where the next whole line starts: a tail made again from here repeats no line."""
        return self._offset - len(self._partial)

    def read_lines(self, final: bool = False) -> list[str]:
        """Whole lines appended since the last call; with `final`, a last unterminated line too.
        Carriage-return progress lines keep only their last state, as the dendro SDK uploads them."""
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = b"" if final else lines.pop()
        states = (line.decode(errors="replace").rstrip("\r").rsplit("\r", 1)[-1] for line in lines)
        return [state for state in states if state.strip()]
