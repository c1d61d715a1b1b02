import django.db.models.deletion
from django.db import migrations, models

# The size charts' slots kept up to date as artifacts are written: per system, kind and 6-hour slot (from
# midnight UTC), how many finished artifacts it holds and the largest of them (the earliest of equals). The
# dashboard reads a few hundred of these rows instead of every artifact of 30 days (drpanel/dashboard.py).
#
# Kept by statement-level triggers on the artifact table, not by the code that writes artifacts: rows come from
# the backup jobs, inventory sync, legacy import, deletions, status changes in bulk (``QuerySet.update``) and plain
# SQL alike, and a trigger sees them all, in the same transaction as the write. Each trigger recomputes the slots
# its statement touched from the artifact rows themselves (a slot holds at most a few hundred), so a deletion or a
# status change that removes the largest artifact of a slot is as right as an insert.
SLOT_WIDTH = "6 hours"

FORWARD = f"""
CREATE FUNCTION backups_artifact_slot_refresh(systems bigint[], kinds text[], slots timestamptz[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    -- One transaction at a time per system, locks taken in one order (two refreshes never deadlock; per system
    -- rather than per slot, so a bulk load of many slots takes few locks): each statement below takes its own
    -- snapshot (READ COMMITTED), after the lock, so it sees every committed row of its slots and a concurrent
    -- writer's rows are never lost.
    PERFORM pg_advisory_xact_lock(hashtext('backups_artifact_slot'), (l.s % 2147483647)::int)
    FROM (SELECT DISTINCT s FROM unnest(systems) AS u(s) ORDER BY 1) AS l;
    DELETE FROM backups_artifactslot r USING unnest(systems, kinds, slots) AS u(s, k, t)
    WHERE r.slot = u.t AND r.system_id = u.s AND r.kind = u.k;
    INSERT INTO backups_artifactslot (slot, system_id, kind, count, artifact_id, size, created_at, status)
    SELECT DISTINCT ON (u.t, u.s, u.k) u.t, u.s, u.k, count(*) OVER w, a.id, a.size, a.created_at, a.status
    FROM (SELECT DISTINCT * FROM unnest(systems, kinds, slots)) AS u(s, k, t)
    JOIN backups_artifact a ON a.system_id = u.s AND a.kind = u.k
                           AND a.created_at >= u.t AND a.created_at < u.t + interval '{SLOT_WIDTH}'
    WHERE a.size IS NOT NULL AND a.status NOT IN ('writing', 'failed')
    WINDOW w AS (PARTITION BY u.t, u.s, u.k)
    ORDER BY u.t, u.s, u.k, a.size DESC, a.created_at, a.id;
END $$;

-- One function for the three statement triggers (a trigger with transition tables has a single event);
-- PL/pgSQL plans a statement when it first runs it, so each branch reads only the tables its event has.
CREATE FUNCTION backups_artifact_slot_sync() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    systems bigint[];
    kinds text[];
    slots timestamptz[];
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        DELETE FROM backups_artifactslot;  -- not TRUNCATE: a flush truncates both tables in one statement
        RETURN NULL;
    ELSIF TG_OP = 'INSERT' THEN
        SELECT array_agg(system_id), array_agg(kind), array_agg(slot) INTO systems, kinds, slots FROM (
            SELECT DISTINCT system_id, kind::text, date_bin('{SLOT_WIDTH}', created_at, 'epoch') AS slot
            FROM new_rows) AS k;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(system_id), array_agg(kind), array_agg(slot) INTO systems, kinds, slots FROM (
            SELECT DISTINCT system_id, kind::text, date_bin('{SLOT_WIDTH}', created_at, 'epoch') AS slot
            FROM old_rows) AS k;
    ELSE  -- UPDATE: only rows whose slot or place in it changed (a verification's marks leave them alone)
        SELECT array_agg(system_id), array_agg(kind), array_agg(slot) INTO systems, kinds, slots FROM (
            SELECT DISTINCT c.system_id, c.kind::text, date_bin('{SLOT_WIDTH}', c.created_at, 'epoch') AS slot
            FROM old_rows o FULL JOIN new_rows n ON n.id = o.id
            CROSS JOIN LATERAL (VALUES (o.system_id, o.kind, o.created_at), (n.system_id, n.kind, n.created_at))
                AS c(system_id, kind, created_at)
            WHERE c.system_id IS NOT NULL
              AND (o.id IS NULL OR n.id IS NULL
                   OR (o.system_id, o.kind, o.created_at, o.size, o.status)
                      IS DISTINCT FROM (n.system_id, n.kind, n.created_at, n.size, n.status))) AS k;
    END IF;
    IF systems IS NOT NULL THEN
        PERFORM backups_artifact_slot_refresh(systems, kinds, slots);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER backups_artifact_slot_insert AFTER INSERT ON backups_artifact
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION backups_artifact_slot_sync();
CREATE TRIGGER backups_artifact_slot_update AFTER UPDATE ON backups_artifact
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION backups_artifact_slot_sync();
CREATE TRIGGER backups_artifact_slot_delete AFTER DELETE ON backups_artifact
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION backups_artifact_slot_sync();
CREATE TRIGGER backups_artifact_slot_truncate AFTER TRUNCATE ON backups_artifact
    FOR EACH STATEMENT EXECUTE FUNCTION backups_artifact_slot_sync();

-- The artifacts already catalogued (the migration runs alone: no lock needed).
INSERT INTO backups_artifactslot (slot, system_id, kind, count, artifact_id, size, created_at, status)
SELECT DISTINCT ON (slot, system_id, kind) slot, system_id, kind, count(*) OVER w, id, size, created_at, status
FROM (SELECT *, date_bin('{SLOT_WIDTH}', created_at, 'epoch') AS slot FROM backups_artifact
      WHERE size IS NOT NULL AND status NOT IN ('writing', 'failed')) AS a
WINDOW w AS (PARTITION BY slot, system_id, kind)
ORDER BY slot, system_id, kind, size DESC, created_at, id;
"""

BACKWARD = """
DROP TRIGGER backups_artifact_slot_truncate ON backups_artifact;
DROP TRIGGER backups_artifact_slot_delete ON backups_artifact;
DROP TRIGGER backups_artifact_slot_update ON backups_artifact;
DROP TRIGGER backups_artifact_slot_insert ON backups_artifact;
DROP FUNCTION backups_artifact_slot_sync();
DROP FUNCTION backups_artifact_slot_refresh(bigint[], text[], timestamptz[]);
"""


class Migration(migrations.Migration):

    dependencies = [
        ("backups", "0007_artifact_created_sizes_index"),
    ]

    operations = [
        migrations.CreateModel(
            name="ArtifactSlot",
            fields=[
                ("pk", models.CompositePrimaryKey("slot", "system", "kind", blank=True, editable=False, primary_key=True,
                                                  serialize=False)),
                ("slot", models.DateTimeField()),
                ("kind", models.CharField(choices=[("full", "full"), ("incremental", "incremental"), ("config", "config"),
                                                   ("base", "base (Barman)")], max_length=12)),
                ("count", models.IntegerField()),
                ("size", models.BigIntegerField()),
                ("created_at", models.DateTimeField()),
                ("status", models.CharField(choices=[("writing", "writing"), ("available", "available"),
                                                     ("missing", "missing"), ("failed", "failed"),
                                                     ("deleted", "deleted"), ("quarantined", "quarantined")],
                                            max_length=12)),
                ("artifact", models.ForeignKey(db_constraint=False, db_index=False,
                                               on_delete=django.db.models.deletion.DO_NOTHING, related_name="+",
                                               to="backups.artifact")),
                ("system", models.ForeignKey(db_constraint=False, db_index=False,
                                             on_delete=django.db.models.deletion.DO_NOTHING, related_name="+",
                                             to="backups.system")),
            ],
        ),
        migrations.RunSQL(FORWARD, BACKWARD),
    ]
