"""Signing in to the console and what each scope may do, in process: the API app
with the console mounted, on an embedded database and the filesystem broker
(no worker runs: jobs stay queued)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from qrfarm.api import tokens
from qrfarm.api.app import create_app
from qrfarm.client import Client
from qrfarm.config import Settings
from qrfarm.console import mount
from qrfarm.console import session as console_session
from qrfarm.console.session import SESSION_COOKIE
from qrfarm.dicom import Level
from qrfarm.jobs.nodes import NodeSpec, upsert_node
from qrfarm.models import (
    ApiToken,
    AuditEvent,
    ConsoleSession,
    OrphanInstance,
    ReceivedInstance,
    upgrade,
)
from qrfarm.workflow import audit
from qrfarm.workflow import rules as prefetch_rules

CSRF = re.compile(r'name="csrf" value="([^"]+)"')
ACTION_BUTTONS = ("Submit", "Cancel job", "Retry job", 'id="bulk"', "Add node", "Save node")


class Console:
    def __init__(self, app_client: TestClient, client: Client, tokens_: dict[str, str]) -> None:
        self.http = app_client
        self.client = client
        self.tokens = tokens_

    def browser(self) -> TestClient:
        return TestClient(self.http.app, base_url="http://127.0.0.1", follow_redirects=True)

    def sign_in(self, who: str) -> tuple[TestClient, str]:
        browser = self.browser()
        form = browser.get("/console/login")
        answer = browser.post(
            "/console/login",
            data={
                "token": self.tokens[who],
                "csrf": CSRF.findall(form.text)[0],
                "next": "/console/jobs",
            },
        )
        assert answer.status_code == 200, answer.text
        return browser, CSRF.findall(answer.text)[0]


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    root = tmp_path_factory.mktemp("console")
    settings = Settings(
        database_url=f"sqlite:///{root / 'qrfarm.db'}",
        data_dir=root / "data",
        storage_root=root / "storage",
        allowed_hosts=["127.0.0.1"],
        # Every test here signs in from the same address within seconds.
        api_rate_per_s=1000.0,
        api_rate_burst=1000,
    )
    upgrade(settings.database_url)
    client = Client.from_settings(settings)
    app = create_app(settings, engine=client.engine, dispatcher=client.dispatcher)
    mount(app, client)
    with client.sessions() as db, db.begin():
        issued = {
            "admin": tokens.issue(db, "console-admin", ["read", "submit", "admin"]),
            "reader": tokens.issue(db, "console-reader", ["read"]),
            "submitter": tokens.issue(db, "console-submitter", ["read", "submit"]),
        }
        upsert_node(db, NodeSpec("pacs", "PACS", "127.0.0.1", 11112))
    try:
        yield Console(TestClient(app, base_url="http://127.0.0.1"), client, issued)
    finally:
        client.close()


def test_pages_send_a_stranger_to_sign_in_and_refuse_an_unknown_token(console: Console) -> None:
    browser = console.browser()
    for path in ("/console/", "/console/jobs", "/console/nodes/pacs", "/console/orphans"):
        answer = browser.get(path)
        assert answer.url.path == "/console/login", path
    form = browser.get("/console/login")
    refused = browser.post(
        "/console/login",
        data={"token": "qrf_not-a-token", "csrf": CSRF.findall(form.text)[0], "next": "/"},
    )
    assert refused.status_code == 401
    assert SESSION_COOKIE not in browser.cookies
    # A sign-in form not from this console (no login cookie's nonce) is refused.
    forged = console.browser().post(
        "/console/login", data={"token": console.tokens["admin"], "csrf": "x", "next": "/"}
    )
    assert forged.status_code == 403


def test_the_session_cookie_is_signed_http_only_and_strict(console: Console) -> None:
    browser = console.browser()
    form = browser.get("/console/login")
    answer = browser.post(
        "/console/login",
        data={"token": console.tokens["reader"], "csrf": CSRF.findall(form.text)[0]},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    cookie = next(
        h for h in answer.headers.get_list("set-cookie") if h.startswith(SESSION_COOKIE + "=")
    )
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    assert console.tokens["reader"] not in cookie
    page = browser.get("/console/jobs")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "script-src 'self';" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    # A cookie changed by hand is not a session.
    value = cookie.split(";")[0].split("=", 1)[1]
    tampered = console.browser()
    tampered.cookies.set(SESSION_COOKIE, value[:-4] + "AAAA", path="/console")
    assert tampered.get("/console/jobs").url.path == "/console/login"


def test_a_read_token_sees_no_action_and_its_forged_posts_are_refused(console: Console) -> None:
    job_id = console.client.move("pacs", Level.STUDY, {"StudyInstanceUID": "1.2.3"})
    browser, csrf = console.sign_in("reader")
    for path in (
        "/console/jobs",
        f"/console/jobs/{job_id}",
        "/console/nodes",
        "/console/nodes/pacs",
    ):
        text = browser.get(path).text
        assert not [b for b in ACTION_BUTTONS if b in text], path
    # With its own valid CSRF token, a read token still may not act.
    for path, data in (
        (f"/console/jobs/{job_id}/cancel", {}),
        ("/console/jobs/bulk", {"action": "cancel", "target": "filter"}),
        ("/console/jobs", {"kind": "move", "node": "pacs", "level": "STUDY", "keys": "x=1"}),
        ("/console/nodes", {"name": "x", "ae_title": "X", "host": "127.0.0.1", "port": "104"}),
    ):
        answer = browser.post(path, data={**data, "csrf": csrf})
        assert answer.status_code == 403, (path, answer.text)
    assert console.client.status(job_id)["state"] == "queued"


def test_a_post_without_the_csrf_token_is_refused_whatever_the_scope(console: Console) -> None:
    job_id = console.client.move("pacs", Level.STUDY, {"StudyInstanceUID": "1.2.4"})
    browser, csrf = console.sign_in("admin")
    for sent in ({}, {"csrf": "wrong"}, {"csrf": csrf[:-1]}):
        answer = browser.post(f"/console/jobs/{job_id}/cancel", data=sent)
        assert answer.status_code == 403, sent
    assert console.client.status(job_id)["state"] == "queued"
    cancelled = browser.post(f"/console/jobs/{job_id}/cancel", data={"csrf": csrf})
    assert cancelled.status_code == 200
    assert console.client.status(job_id)["state"] == "cancelled"
    with console.client.sessions() as db:
        rows = db.query(AuditEvent).filter(AuditEvent.job_id == job_id).all()
    assert [(r.action, r.actor, r.outcome) for r in rows if r.action == "job.cancel"] == [
        ("job.cancel", "console-admin", "success")
    ]


def test_submit_may_act_on_jobs_but_not_on_nodes(console: Console) -> None:
    browser, csrf = console.sign_in("submitter")
    text = browser.get("/console/jobs").text
    assert "Submit" in text and "Add node" not in browser.get("/console/nodes").text
    answer = browser.post(
        "/console/nodes",
        data={"csrf": csrf, "name": "x", "ae_title": "X", "host": "127.0.0.1", "port": "104"},
    )
    assert answer.status_code == 403
    submitted = browser.post(
        "/console/jobs",
        data={
            "csrf": csrf,
            "kind": "move",
            "node": "pacs",
            "level": "STUDY",
            "root": "study",
            "keys": "StudyInstanceUID=1.2.5",
        },
    )
    assert "queued." in submitted.text
    refused = browser.post(
        "/console/jobs",
        data={
            "csrf": csrf,
            "kind": "move",
            "node": "pacs",
            "level": "STUDY",
            "root": "study",
            "keys": "PatientName=SECRET^PATIENT",
        },
    )
    assert "Not submitted" in refused.text and "SECRET" not in refused.text


def test_a_revoked_token_ends_its_session(console: Console) -> None:
    with console.client.sessions() as db, db.begin():
        token = tokens.issue(db, "console-brief", ["read"])
    console.tokens["brief"] = token
    browser, _ = console.sign_in("brief")
    assert browser.get("/console/nodes").url.path == "/console/nodes"
    with console.client.sessions() as db, db.begin():
        tokens.revoke(db, "console-brief")
    assert browser.get("/console/nodes").url.path == "/console/login"


def test_signing_out_ends_the_session_for_a_copy_of_its_cookie_too(console: Console) -> None:
    browser, csrf = console.sign_in("reader")
    copied = console.browser()
    copied.cookies.set(SESSION_COOKIE, browser.cookies[SESSION_COOKIE], path="/console")
    assert copied.get("/console/nodes").url.path == "/console/nodes"
    signed_out = browser.post("/console/logout", data={"csrf": csrf})
    assert signed_out.url.path == "/console/login"
    # The cookie is still valid by its signature and expiry; the session is not.
    assert copied.get("/console/nodes").url.path == "/console/login"
    assert copied.post("/console/logout", data={"csrf": csrf}).status_code == 401
    with console.client.sessions() as db:
        events = db.scalars(
            select(AuditEvent.action).where(AuditEvent.actor == "console-reader")
        ).all()
    assert "console.sign_out" in events
    # Signing in again is a new session, unaffected by the one ended.
    again, _ = console.sign_in("reader")
    assert again.get("/console/nodes").url.path == "/console/nodes"


def _login_form(browser: TestClient, token: str, csrf: str | None = None) -> Any:
    form = browser.get("/console/login")
    return browser.post(
        "/console/login",
        data={"token": token, "csrf": csrf if csrf is not None else CSRF.findall(form.text)[0]},
    )


def _live_sessions(console: Console, token_name: str) -> int:
    with console.client.sessions() as db:
        count = db.scalar(
            select(func.count())
            .select_from(ConsoleSession)
            .join(ApiToken, ApiToken.id == ConsoleSession.token_id)
            .where(ApiToken.name == token_name)
        )
    return int(count or 0)


def test_signing_in_again_ends_the_session_the_browser_had(console: Console) -> None:
    browser, _ = console.sign_in("reader")
    first = browser.cookies[SESSION_COOKIE]
    copied = console.browser()
    copied.cookies.set(SESSION_COOKIE, first, path="/console")
    assert _login_form(browser, console.tokens["submitter"]).url.path == "/console/"
    assert browser.cookies[SESSION_COOKIE] != first
    assert browser.get("/console/nodes").url.path == "/console/nodes"
    assert copied.get("/console/nodes").url.path == "/console/login"


def test_a_token_keeps_at_most_a_bounded_number_of_live_sessions(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cap of 3 here (20 as shipped): fewer sign-ins to show it.
    monkeypatch.setattr(console_session, "MAX_SESSIONS_PER_TOKEN", 3)
    with console.client.sessions() as db, db.begin():
        console.tokens["many"] = tokens.issue(db, "console-many", ["read"])
    browsers = [console.sign_in("many")[0] for _ in range(5)]
    assert _live_sessions(console, "console-many") == 3
    # The oldest were ended; the newest still serve.
    assert browsers[0].get("/console/nodes").url.path == "/console/login"
    assert browsers[-1].get("/console/nodes").url.path == "/console/nodes"


def test_a_token_without_read_is_refused_at_sign_in_by_name(console: Console) -> None:
    with console.client.sessions() as db, db.begin():
        token = tokens.issue(db, "console-submit-only", ["submit"])
    answer = _login_form(console.browser(), token)
    assert answer.status_code == 403
    assert "lacks the scope" in answer.text and "read" in answer.text
    assert _live_sessions(console, "console-submit-only") == 0


def test_a_session_whose_token_lost_read_can_still_sign_out(console: Console) -> None:
    with console.client.sessions() as db, db.begin():
        console.tokens["fading"] = tokens.issue(db, "console-fading", ["read"])
    browser, csrf = console.sign_in("fading")
    with console.client.sessions() as db, db.begin():
        tokens.set_scopes(db, "console-fading", ["submit"])
    assert browser.get("/console/nodes").status_code == 403
    assert browser.post("/console/logout", data={"csrf": csrf}).url.path == "/console/login"
    with console.client.sessions() as db, db.begin():
        tokens.set_scopes(db, "console-fading", ["read"])
    # Given read again, the session signed out stays ended.
    assert browser.get("/console/nodes").url.path == "/console/login"


def test_a_sign_in_form_with_a_non_ascii_csrf_value_is_refused_not_an_error(
    console: Console,
) -> None:
    answer = _login_form(console.browser(), console.tokens["reader"], csrf="é" * 8)
    assert answer.status_code == 403


def test_static_files_are_served_and_nothing_comes_from_elsewhere(console: Console) -> None:
    browser, _ = console.sign_in("admin")
    for path in (
        "/console/",
        "/console/jobs",
        "/console/nodes",
        "/console/prefetch",
        "/console/orphans",
    ):
        text = browser.get(path).text
        assert not re.search(r'(src|href)="(https?:)?//', text), path
    assert browser.get("/console/static/console.js").status_code == 200


def test_bulk_actions_on_ticked_jobs_and_on_a_filter(console: Console) -> None:
    jobs = [
        console.client.move("pacs", Level.STUDY, {"StudyInstanceUID": f"1.2.9.{n}"})
        for n in range(3)
    ]
    browser, csrf = console.sign_in("submitter")
    answer = browser.post(
        "/console/jobs/bulk",
        data={
            "csrf": csrf,
            "action": "prioritise",
            "priority": "7",
            "target": "selected",
            "job_id": [str(j) for j in jobs[:2]],
        },
    )
    assert f"prioritise: 2 job(s) done ({jobs[0]}, {jobs[1]})." in answer.text
    assert [console.client.status(j)["priority"] for j in jobs] == [7, 7, 0]
    # Every job the filter matches: the queued jobs of the node.
    answer = browser.post(
        "/console/jobs/bulk",
        data={
            "csrf": csrf,
            "action": "cancel",
            "target": "filter",
            "f_node": "pacs",
            "f_state": "queued",
        },
    )
    assert "cancel: " in answer.text
    assert {console.client.status(j)["state"] for j in jobs} == {"cancelled"}
    empty = browser.post(
        "/console/jobs/bulk", data={"csrf": csrf, "action": "cancel", "target": "filter"}
    )
    assert "nothing done" in empty.text


def _orphan(console: Console, uid: str, study: str, calling_ae: str, file_path: str) -> None:
    with console.client.sessions() as db, db.begin():
        db.add(
            OrphanInstance(
                sop_instance_uid=uid,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                study_instance_uid=study,
                series_instance_uid=f"{study}.1",
                transfer_syntax="1.2.840.10008.1.2.1",
                size=1000,
                file_path=file_path,
                calling_ae=calling_ae,
            )
        )


def test_orphans_by_sender_and_study_assigned_or_discarded_by_an_admin(console: Console) -> None:
    storage = console.client.settings.storage_root
    (storage / "orphans").mkdir(parents=True, exist_ok=True)
    kept, dropped = storage / "orphans" / "a.dcm", storage / "orphans" / "b.dcm"
    kept.write_bytes(b"kept")
    dropped.write_bytes(b"dropped")
    _orphan(console, "1.2.7.1.1", "1.2.7.1", "PACS", "orphans/a.dcm")
    _orphan(console, "1.2.7.1.2", "1.2.7.1", "PACS", "orphans/a2.dcm")
    _orphan(console, "1.2.7.2.1", "1.2.7.2", "OTHER", "orphans/b.dcm")
    job_id = console.client.move("pacs", Level.STUDY, {"StudyInstanceUID": "1.2.7.1"})

    reader, reader_csrf = console.sign_in("reader")
    page_text = reader.get("/console/orphans").text
    assert "1.2.7.1" in page_text and "OTHER" in page_text and "matched no" in page_text
    assert "Assign" not in page_text and "Discard" not in page_text
    refused = reader.post(
        "/console/orphans/discard",
        data={"csrf": reader_csrf, "calling_ae": "OTHER", "study_uid": "1.2.7.2"},
    )
    assert refused.status_code == 403

    admin, csrf = console.sign_in("admin")
    assigned = admin.post(
        "/console/orphans/assign",
        data={"csrf": csrf, "calling_ae": "PACS", "study_uid": "1.2.7.1", "job_id": str(job_id)},
    )
    assert f"2 instance(s) given to job {job_id}." in assigned.text
    assert console.client.status(job_id)["recorded"] == 2
    discarded = admin.post(
        "/console/orphans/discard",
        data={"csrf": csrf, "calling_ae": "OTHER", "study_uid": "1.2.7.2"},
    )
    assert "1 orphan(s) discarded." in discarded.text
    assert kept.exists() and not dropped.exists()
    with console.client.sessions() as db:
        left = db.scalars(select(OrphanInstance).where(OrphanInstance.matched_job_id.is_(None)))
        assert [o.sop_instance_uid for o in left if o.sop_instance_uid.startswith("1.2.7.")] == []
        received = db.scalars(select(ReceivedInstance).where(ReceivedInstance.job_id == job_id))
        assert {(r.sop_instance_uid, r.matched_by.value) for r in received} == {
            ("1.2.7.1.1", "late"),
            ("1.2.7.1.2", "late"),
        }
    assert "No orphans." in admin.get("/console/orphans").text


def test_prefetch_page_rules_saved_by_an_admin_prefetches_with_their_jobs_and_hl7(
    console: Console,
) -> None:
    admin, csrf = console.sign_in("admin")
    rule = '{"nodes": ["pacs"], "modalities": ["CT"], "max_studies": 2}'
    saved = admin.post(
        "/console/prefetch/rules", data={"csrf": csrf, "name": "ct-priors", "definition": rule}
    )
    assert "Rule ct-priors saved." in saved.text
    bad = admin.post(
        "/console/prefetch/rules",
        data={"csrf": csrf, "name": "broken", "definition": '{"nodes": []}'},
    )
    assert "Rule not saved" in bad.text and "broken" not in _rule_names(console)
    prefetch_id = console.client.prefetch("P-CONSOLE", "ct-priors")
    child = console.client.prefetch_status(prefetch_id)
    # As the HL7 listener records a message it answered (qrfarm.hl7.listener).
    audit.write(
        console.client.sessions,
        audit.Actor("hl7", "RIS", "127.0.0.1"),
        audit.Event("hl7.order", audit.CREATE, audit.REFUSED, detail="ORM^O01 42: no rule"),
    )
    page_text = admin.get("/console/prefetch").text
    assert "ct-priors" in page_text and "modalities" in page_text
    assert f"<td>{prefetch_id}</td>" in page_text
    assert child["jobs"]  # its find on the rule's node
    for job in child["jobs"]:
        assert f'href="/console/jobs/{job["id"]}"' in page_text
    assert "ORM^O01 42: no rule" in page_text and ">AR<" in page_text
    reader, reader_csrf = console.sign_in("reader")
    assert "Save rule" not in reader.get("/console/prefetch").text
    refused = reader.post(
        "/console/prefetch/rules", data={"csrf": reader_csrf, "name": "x", "definition": rule}
    )
    assert refused.status_code == 403


def _rule_names(console: Console) -> list[str]:
    with console.client.sessions() as db:
        return list(prefetch_rules.list_rules(db))
