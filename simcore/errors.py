"""Errors that reach the user as one line: where (file:line, key path or CLI flag) and what."""

from __future__ import annotations


class SimError(Exception):
    """Base of all user-facing errors; `str()` is the one-line message the CLI prints."""

    exit_code = 2


class ConfigError(SimError):
    """Bad input: a malformed YAML, an unknown key, a wrong unit, an impossible value."""

    def __init__(
        self, message: str, file: str | None = None, line: int | None = None, key: str | None = None
    ):
        self.message, self.file, self.line, self.key = message, file, line, key
        where = ""
        if file:
            where = f"{file}:{line}: " if line else f"{file}: "
        super().__init__(f"{where}{key + ': ' if key else ''}{message}")


class OutOfMemory(SimError):
    """A tensor does not fit into a device's memory: an outcome of the simulation, reported plainly."""

    exit_code = 3

    def __init__(self, tensor: str, device: str, needed_B: float, free_B: float, capacity_B: float,
                 hint: str = ""):  # fmt: skip
        # the raw fields are the exception's args, so re-raising through SimPy keeps them
        super().__init__(tensor, device, needed_B, free_B, capacity_B, hint)
        self.tensor, self.device, self.needed_B, self.free_B, self.capacity_B, self.hint = self.args

    def __str__(self) -> str:
        from simcore.units import fmt

        return (f"out of memory: tensor {self.tensor!r} needs {fmt(self.needed_B, 'bytes')} on {self.device}, "
                f"which has {fmt(self.free_B, 'bytes')} free of {fmt(self.capacity_B, 'bytes')}"
                + (f"; {self.hint}" if self.hint else ""))  # fmt: skip


class InternalError(SimError):
    """A broken invariant: a bug, reported in one line."""

    exit_code = 70
