from django.db import migrations

# ENABLE ALWAYS: the append-only triggers (and the signed-certification one) fire in every
# session_replication_role, "replica" included, so a role that could switch replication mode on
# still could not silence them. Only ALTER TABLE (the owner, a superuser) can disable them.
ALWAYS_SQL = """
ALTER TABLE compliance_auditevent ENABLE ALWAYS TRIGGER compliance_auditevent_no_update_delete;
ALTER TABLE compliance_auditevent ENABLE ALWAYS TRIGGER compliance_auditevent_no_truncate;
ALTER TABLE compliance_certification ENABLE ALWAYS TRIGGER compliance_certification_final;
"""

ORIGIN_SQL = """
ALTER TABLE compliance_certification ENABLE TRIGGER compliance_certification_final;
ALTER TABLE compliance_auditevent ENABLE TRIGGER compliance_auditevent_no_truncate;
ALTER TABLE compliance_auditevent ENABLE TRIGGER compliance_auditevent_no_update_delete;
"""


class Migration(migrations.Migration):

    dependencies = [
        ("compliance", "0006_certification"),
    ]

    operations = [
        migrations.RunSQL(ALWAYS_SQL, ORIGIN_SQL),
    ]
