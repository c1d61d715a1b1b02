"""What the browser tests share: leaving pages so their polling stops before the live server does."""

from playwright.sync_api import Error

INTERRUPTED = "interrupted by another navigation"


def blank(page, attempts: int = 3) -> None:
    """Navigate ``page`` to about:blank, which ends its polling.

    A run's page reloads itself 300 ms after its run is done (``static/js/restores.js``): when that reload starts
    while the test leaves, Chromium refuses the test's navigation as interrupted. Then the reload is let finish
    and the page is left again.
    """
    for attempt in range(1, attempts + 1):
        try:
            page.goto("about:blank")
            return
        except Error as exc:
            if INTERRUPTED not in str(exc) or attempt == attempts:
                raise
            page.wait_for_load_state()


def leave(*pages) -> None:
    """Stop the pages' polling before the live server stops (an open request would keep a database session);
    the contexts of all but the first page are closed."""
    for each in pages:
        blank(each)
    for each in pages[1:]:
        each.context.close()
