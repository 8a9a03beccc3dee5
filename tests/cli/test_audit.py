"""The command line's audit trail: a queued move names the person at the
terminal, its job, node and study; `qrfarm audit` reads it back, filtered; the
scheduler removes rows past the retention."""

from __future__ import annotations

import datetime as dt
import getpass
import json
import socket

from sqlalchemy import select

from qrfarm.models import AuditEvent, utcnow

from .conftest import CliFarm

STUDY = "1.2.826.0.1.3680043.2.1125.99.1"


def test_a_queued_move_is_recorded_with_the_os_user_and_read_back_by_qrfarm_audit(
    cli_farm: CliFarm,
) -> None:
    moved = cli_farm.run("move", "sandbox", "-k", f"StudyInstanceUID={STUDY}", "--json")
    assert moved.returncode == 0, moved.stderr
    job_id = json.loads(moved.stdout)["id"]

    listed = cli_farm.run("audit", "--json", "--action", "job.submit", "--job", str(job_id))
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert (row["actor_kind"], row["actor"]) == ("os_user", getpass.getuser())
    assert row["source"] == socket.gethostname()
    assert (row["job_id"], row["node"], row["study_uid"]) == (job_id, "sandbox", STUDY)
    assert (row["action_code"], row["outcome"]) == ("C", "success")
    # Filters narrow: another actor, nothing.
    other = cli_farm.run("audit", "--json", "--job", str(job_id), "--actor", "someone-else")
    assert json.loads(other.stdout) == []
    # The table form names the action too.
    table = cli_farm.run("audit", "--job", str(job_id))
    assert "job.submit" in table.stdout


def test_the_scheduler_removes_audit_rows_past_the_retention(cli_farm: CliFarm) -> None:
    sessions = cli_farm.farm.client.sessions
    with sessions() as session, session.begin():
        for days, detail in ((3, "old"), (0, "recent")):
            session.add(
                AuditEvent(
                    at=utcnow() - dt.timedelta(days=days),
                    action="test.retention",
                    action_code="R",
                    outcome="success",
                    actor_kind="os_user",
                    actor="tester",
                    detail=detail,
                )
            )
    ran = cli_farm.farm_run("scheduler", "--once", QRFARM_AUDIT_RETENTION_DAYS="1")
    assert ran.returncode == 0, ran.stderr
    with sessions() as session:
        kept = session.scalars(
            select(AuditEvent.detail).where(AuditEvent.action == "test.retention")
        ).all()
    assert kept == ["recent"]
