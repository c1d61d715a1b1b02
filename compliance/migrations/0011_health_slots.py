import django.db.models.deletion
from django.db import migrations, models

# The health chart's slots kept up to date as snapshots are written: per system and 3-hour slot (from midnight
# UTC), how many scores were recorded, the lowest, the last (the newest time, then the newest row) and the time of
# the first. The dashboard reads a few hundred of these rows instead of every snapshot of 30 days
# (drpanel/dashboard.py).
#
# Kept by statement-level triggers, like backups_artifactslot (backups/migrations/0008_artifact_slots.py): every
# write is seen, whatever wrote it (the recompute, a system's deletion, plain SQL), in the same transaction;
# each trigger recomputes the slots its statement touched from the snapshots themselves.
SLOT_WIDTH = "3 hours"

FORWARD = f"""
CREATE FUNCTION compliance_health_slot_refresh(systems bigint[], slots timestamptz[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    -- One transaction at a time per system, in one order, each statement with its own snapshot after the lock:
    -- as for the artifact slots, a concurrent writer's rows are never lost.
    PERFORM pg_advisory_xact_lock(hashtext('compliance_health_slot'), (l.s % 2147483647)::int)
    FROM (SELECT DISTINCT s FROM unnest(systems) AS u(s) ORDER BY 1) AS l;
    DELETE FROM compliance_healthslot r USING unnest(systems, slots) AS u(s, t)
    WHERE r.slot = u.t AND r.system_id = u.s;
    INSERT INTO compliance_healthslot (slot, system_id, count, lowest, last, first_at)
    SELECT u.t, u.s, count(*), min(h.score), (array_agg(h.score ORDER BY h.at DESC, h.id DESC))[1], min(h.at)
    FROM (SELECT DISTINCT * FROM unnest(systems, slots)) AS u(s, t)
    JOIN compliance_healthsnapshot h ON h.system_id = u.s
                                    AND h.at >= u.t AND h.at < u.t + interval '{SLOT_WIDTH}'
    GROUP BY u.t, u.s;
END $$;

-- One function for the three statement triggers (a trigger with transition tables has a single event);
-- PL/pgSQL plans a statement when it first runs it, so each branch reads only the tables its event has.
CREATE FUNCTION compliance_health_slot_sync() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    systems bigint[];
    slots timestamptz[];
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        DELETE FROM compliance_healthslot;  -- not TRUNCATE: a flush truncates both tables in one statement
        RETURN NULL;
    ELSIF TG_OP = 'INSERT' THEN
        SELECT array_agg(system_id), array_agg(slot) INTO systems, slots FROM (
            SELECT DISTINCT system_id, date_bin('{SLOT_WIDTH}', at, 'epoch') AS slot FROM new_rows) AS k;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(system_id), array_agg(slot) INTO systems, slots FROM (
            SELECT DISTINCT system_id, date_bin('{SLOT_WIDTH}', at, 'epoch') AS slot FROM old_rows) AS k;
    ELSE  -- UPDATE (snapshots are history and not changed, but a change must not leave the chart wrong)
        SELECT array_agg(system_id), array_agg(slot) INTO systems, slots FROM (
            SELECT DISTINCT c.system_id, date_bin('{SLOT_WIDTH}', c.at, 'epoch') AS slot
            FROM old_rows o FULL JOIN new_rows n ON n.id = o.id
            CROSS JOIN LATERAL (VALUES (o.system_id, o.at), (n.system_id, n.at)) AS c(system_id, at)
            WHERE c.system_id IS NOT NULL
              AND (o.id IS NULL OR n.id IS NULL
                   OR (o.system_id, o.at, o.score) IS DISTINCT FROM (n.system_id, n.at, n.score))) AS k;
    END IF;
    IF systems IS NOT NULL THEN
        PERFORM compliance_health_slot_refresh(systems, slots);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER compliance_health_slot_insert AFTER INSERT ON compliance_healthsnapshot
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION compliance_health_slot_sync();
CREATE TRIGGER compliance_health_slot_update AFTER UPDATE ON compliance_healthsnapshot
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION compliance_health_slot_sync();
CREATE TRIGGER compliance_health_slot_delete AFTER DELETE ON compliance_healthsnapshot
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION compliance_health_slot_sync();
CREATE TRIGGER compliance_health_slot_truncate AFTER TRUNCATE ON compliance_healthsnapshot
    FOR EACH STATEMENT EXECUTE FUNCTION compliance_health_slot_sync();

-- The snapshots already recorded (the migration runs alone: no lock needed).
INSERT INTO compliance_healthslot (slot, system_id, count, lowest, last, first_at)
SELECT date_bin('{SLOT_WIDTH}', at, 'epoch'), system_id, count(*), min(score),
       (array_agg(score ORDER BY at DESC, id DESC))[1], min(at)
FROM compliance_healthsnapshot GROUP BY 1, 2;
"""

BACKWARD = """
DROP TRIGGER compliance_health_slot_truncate ON compliance_healthsnapshot;
DROP TRIGGER compliance_health_slot_delete ON compliance_healthsnapshot;
DROP TRIGGER compliance_health_slot_update ON compliance_healthsnapshot;
DROP TRIGGER compliance_health_slot_insert ON compliance_healthsnapshot;
DROP FUNCTION compliance_health_slot_sync();
DROP FUNCTION compliance_health_slot_refresh(bigint[], timestamptz[]);
"""


class Migration(migrations.Migration):

    dependencies = [
        ("backups", "0008_artifact_slots"),
        ("compliance", "0010_health_system_at_score_index"),
    ]

    operations = [
        migrations.CreateModel(
            name="HealthSlot",
            fields=[
                ("pk", models.CompositePrimaryKey("slot", "system", blank=True, editable=False, primary_key=True,
                                                  serialize=False)),
                ("slot", models.DateTimeField()),
                ("count", models.IntegerField()),
                ("lowest", models.IntegerField()),
                ("last", models.IntegerField()),
                ("first_at", models.DateTimeField()),
                ("system", models.ForeignKey(db_constraint=False, db_index=False,
                                             on_delete=django.db.models.deletion.DO_NOTHING, related_name="+",
                                             to="backups.system")),
            ],
        ),
        migrations.RunSQL(FORWARD, BACKWARD),
    ]
