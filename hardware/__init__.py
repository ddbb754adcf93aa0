"""Hardware component models; importing this package registers every component type."""

from hardware import cpu, gpu, storage, systolic  # noqa: F401
