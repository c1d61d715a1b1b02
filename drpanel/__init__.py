"""DR Panel: the project package (settings, URLs, roles, sign-in, API, dashboard, services)."""
