"""Hardware component models; importing this package registers every component type."""

from hardware import cpu, csd, dram, gpu, pim, storage, systolic  # noqa: F401
