"""``manage.py offsite_recover SYSTEM --location NAME --into DIR --as USERNAME [--time T | --name N]
[--rebuild-list [--listed-system-id ID]]``.

The data-center outage: Barman's home is gone with the workers that held it. An admin builds a data
directory of the system's server from an off-site location alone (``restores.offsite_recovery``), to be
started by PostgreSQL on the new host: it replays the WAL to the point and promotes.

``--rebuild-list``: the panel's database went too. The admin re-creates the system and the location
(same names) on a new panel with the same keys; the command first catalogs the packages from the
encrypted package list stored beside them (``backups.offsite_list``; ``--listed-system-id``: the
system's id in the old panel, the number in ``drpanel/continuous/system-<id>/``).
"""

from datetime import datetime
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from backups.models import StorageLocation, System
from backups.offsite_list import OffsiteListError, offsite_list_rebuild
from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from drpanel.permissions import Cap, has_cap
from restores.offsite_recovery import OffsiteRecoveryError, offsite_materialize
from restores.pitr import RecoveryPoint


class Command(BaseCommand):
    help = ("Build a data directory of a system's server from an off-site location alone (base backup and WAL, "
            "verified and decrypted before anything is written); start it with pg_ctl to recover to the point.")

    def add_arguments(self, parser):
        parser.add_argument("system", help="the system's name")
        parser.add_argument("--location", required=True, help="the off-site storage location's name")
        parser.add_argument("--into", required=True, type=Path, help="the new data directory (must not exist)")
        parser.add_argument("--as", dest="username", required=True, help="the admin who recovers (audited)")
        point = parser.add_mutually_exclusive_group()
        point.add_argument("--time", help="ISO-8601 moment with its offset (default: the latest WAL off-site)")
        point.add_argument("--name", help="a restore point made with pg_create_restore_point")
        parser.add_argument("--rebuild-list", action="store_true",
                            help="first catalog the packages from the encrypted list stored beside them")
        parser.add_argument("--listed-system-id", type=int,
                            help="with --rebuild-list: the system's id in the panel that wrote the list")

    def handle(self, *args, system, location, into, username, time, name, rebuild_list=False, listed_system_id=None,
               **options):
        actor = get_user_model().objects.filter(username=username, is_active=True).first()
        if actor is None:
            raise CommandError(f"no active user named {username!r}")
        found = System.objects.filter(name=system).first()
        place = StorageLocation.objects.filter(name=location, role=StorageLocation.Role.OFFSITE).first()
        if found is None or place is None:
            raise CommandError(f"no system {system!r}" if found is None else f"no off-site location {location!r}")
        if not has_cap(actor, Cap.MANAGE_PANEL):
            with transaction.atomic():
                audit_record(actor=actor, action=AuditAction.ACCESS_DENIED, obj=found, outcome="denied",
                             details={"attempted": "offsite.recover", "need": Cap.MANAGE_PANEL,
                                      "via": "manage.py offsite_recover"})
            raise CommandError(f"{username} may not recover a server from off-site: only admins do")
        try:
            point = (RecoveryPoint.at(datetime.fromisoformat(time)) if time
                     else RecoveryPoint.named(name) if name else RecoveryPoint.latest())
        except ValueError as exc:
            raise CommandError(f"--time/--name: {exc}") from None
        into = Path(into).absolute()
        if rebuild_list:
            try:
                added = offsite_list_rebuild(found, place, actor=actor, listed_system_id=listed_system_id)
            except OffsiteListError as exc:
                raise CommandError(str(exc)) from None
            self.stdout.write(f"{len(added)} package(s) catalogued from the package list in {place.name}.")
        try:
            facts = offsite_materialize(found, place, point, into=into, work=into.with_name(into.name + ".wal"),
                                        actor=actor)
        except OffsiteRecoveryError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(self.style.SUCCESS(
            f"{into}: base backup {facts['base_backup']} and {facts['wal_packages']} WAL package(s) from "
            f"{facts['location']}, verified and decrypted in {facts['fetch_seconds']} s. Keep {into.name}.wal until "
            f"recovery ends; both must belong to the user that runs PostgreSQL. Start it with pg_ctl -D {into} "
            f"start: it recovers to {facts['point']} and promotes."))
