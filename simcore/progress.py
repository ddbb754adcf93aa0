"""Progress bars (tqdm) for long loops: decode steps, validation rows. They draw on stderr only when it is
a terminal, or when asked (`SIMCORE_PROGRESS=1`); `SIMCORE_PROGRESS=0` turns them off. Off a terminal
(tests, CI, JSON piped elsewhere) nothing is printed. tqdm is imported only when a bar is drawn, and a
missing tqdm means no bar."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def enabled() -> bool:
    """Whether bars draw: `SIMCORE_PROGRESS` (1/0) if set, else whether stderr is a terminal."""
    env = os.environ.get("SIMCORE_PROGRESS", "").strip().lower()
    if env in ("1", "on", "true", "yes"):
        return True
    if env in ("0", "off", "false", "no"):
        return False
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def bar(items: Iterable[T], total: int, desc: str, min_total: int = 1) -> Iterable[T] | Iterator[T]:
    """`items` with a tqdm bar on stderr when `total` >= `min_total` and bars are enabled, else `items`."""
    if total < min_total or not enabled():
        return items
    try:
        from tqdm import tqdm
    except ImportError:  # optional at run time: no bar
        return items
    return tqdm(items, total=total, desc=desc, file=sys.stderr, leave=False, unit="it", mininterval=0.2)
