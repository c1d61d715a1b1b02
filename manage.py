#!/usr/bin/env python
"""Django's command-line utility for the DR Panel."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "drpanel.settings")
    from drpanel.runtime import run_entry_point

    def execute() -> None:
        from django.core.management import execute_from_command_line
        from django.db import OperationalError

        from drpanel.env import ConfigError
        from drpanel.runtime import database_unreachable

        try:
            execute_from_command_line(sys.argv)
        except ConfigError as exc:
            print(f"drpanel: {exc}", file=sys.stderr)
            sys.exit(2)
        except OperationalError as exc:
            # The database refused or could not be reached (wrong name, password, host): one line that
            # says which one, unless asked for the traceback.
            if "--traceback" in sys.argv:
                raise
            print(f"drpanel: {database_unreachable(exc)}", file=sys.stderr)
            sys.exit(2)

    run_entry_point(execute)


if __name__ == "__main__":
    main()
