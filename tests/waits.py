"""Waits on conditions, never on clocks: poll a predicate until it holds or a deadline
passes, then fail with a message that says what was awaited and what was last seen."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """``pred()``'s first truthy value, polled every ``interval`` s for up to ``timeout`` s."""
    end = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < end:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def page_wait_for(page: Any, pred: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """``wait_for`` for a condition on what a Playwright page's event handlers record (requests
    seen, downloads): Playwright's sync API runs those handlers only while it is called, so
    the poll lets the page's event loop run between checks instead of sleeping."""
    end = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < end:
        last = pred()
        if last:
            return last
        page.wait_for_timeout(25)  # (pumps the page's events; not a wait before an assert)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def next_frames(page: Any, n: int = 2) -> None:
    """Wait until the page has drawn ``n`` more animation frames: what an input handler
    scheduled (a relayout, a redraw) has happened by then."""
    page.evaluate(
        """n => new Promise(done => {
            const step = k => (k ? requestAnimationFrame(() => step(k - 1)) : done());
            step(n);
        })""",
        n,
    )
