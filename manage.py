#!/usr/bin/env python
"""Django's command-line utility for the DR Panel."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "drpanel.settings")
    from drpanel.runtime import run_entry_point

    def execute() -> None:
        from django.core.management import execute_from_command_line

        from drpanel.env import ConfigError

        try:
            execute_from_command_line(sys.argv)
        except ConfigError as exc:
            print(f"drpanel: {exc}", file=sys.stderr)
            sys.exit(2)

    run_entry_point(execute)


if __name__ == "__main__":
    main()
