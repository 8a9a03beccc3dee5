"""The faces workflow engines use: the REST API, its tokens, prefetch, and the HL7 listener."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..client import Client
from ..config import Settings
from ..errors import InvalidRule, InvalidTlsSettings
from ..jobs.submit import SubmitRules
from ..observability import metrics
from ..workflow import audit
from ..workflow import rules as prefetch_rules
from .common import EXIT_FAILURE, EXIT_OK, EXIT_WARNING, app, err, out, print_json, run
from .farm import JsonOpt, database, dispatcher

token_app = typer.Typer(help="Bearer tokens of the REST API.", no_args_is_help=True)
app.add_typer(token_app, name="token")
rule_app = typer.Typer(help="Stored prefetch rules.", no_args_is_help=True)
app.add_typer(rule_app, name="prefetch-rule")


@app.command()
def api() -> None:
    """Serve the REST API (QRFARM_API_HOST, QRFARM_API_PORT; HTTPS with
    QRFARM_API_TLS_CERT_FILE and QRFARM_API_TLS_KEY_FILE)."""
    import uvicorn
    from prometheus_client import start_http_server

    from ..api.app import create_app
    from ..console import mount as mount_console

    def action(settings: Settings) -> int:
        tls = api_tls_files(settings)  # checked before anything starts
        engine, _ = database(settings)
        application = create_app(settings, engine=engine)
        # The operator console on the same port, behind the same tokens.
        mount_console(application, Client(settings, engine, application.state.qrfarm.dispatcher))
        if settings.api_metrics_port is not None:
            # The farm's metrics without a token, on their own port only.
            start_http_server(
                settings.api_metrics_port,
                addr=settings.metrics_host,
                registry=application.state.qrfarm.metrics,
            )
        scheme = "https" if tls else "http"
        out.print(
            f"qrfarm API on {scheme}://{settings.api_host}:{settings.api_port}", highlight=False
        )
        uvicorn.run(
            application,
            host=settings.api_host,
            port=settings.api_port,
            log_level="info",
            ssl_certfile=str(tls[0]) if tls else None,
            ssl_keyfile=str(tls[1]) if tls else None,
        )
        engine.dispose()
        return EXIT_OK

    run(action, service="api")


def api_tls_files(settings: Settings) -> tuple[Path, Path] | None:
    """The API's certificate chain and key for HTTPS, checked readable; None: plain HTTP."""
    cert, key = settings.api_tls_cert_file, settings.api_tls_key_file
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise InvalidTlsSettings(
            "HTTPS needs both QRFARM_API_TLS_CERT_FILE and QRFARM_API_TLS_KEY_FILE"
        )
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise InvalidTlsSettings(f"the API's TLS files cannot be loaded: {exc}") from exc
    return cert, key


ScopeOpt = Annotated[
    list[str],
    typer.Option(
        "--scope",
        "-s",
        help="read (jobs, results, instances, nodes, prefetches), submit (jobs, prefetches, "
        "cancel, retry) or admin (nodes, rules, the audit trail); repeatable.",
    ),
]


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="Who the token is for.")], scope: ScopeOpt
) -> None:
    """Issue a token with its scopes; it is printed once and only its hash is kept."""
    from ..api import tokens

    def action(settings: Settings) -> int:
        engine, sessions = database(settings)
        with sessions() as session, session.begin():
            token = tokens.issue(session, name, scope)
            audit.record(
                session,
                audit.os_user(),
                audit.Event("token.create", "C", detail=f"token {name}: {' '.join(scope)}"),
            )
        engine.dispose()
        out.print(token, highlight=False)
        return EXIT_OK

    run(action)


@token_app.command("scope")
def token_scope(
    name: Annotated[str, typer.Argument(help="The token's name.")], scope: ScopeOpt
) -> None:
    """Replace a token's scopes (the token's text stays the same)."""
    from ..api import tokens

    def action(settings: Settings) -> int:
        engine, sessions = database(settings)
        with sessions() as session, session.begin():
            stored = tokens.set_scopes(session, name, scope)
            audit.record(
                session,
                audit.os_user(),
                audit.Event("token.scope", "U", detail=f"token {name}: {stored}"),
            )
        engine.dispose()
        out.print(f"token {name}: {stored}", highlight=False)
        return EXIT_OK

    run(action)


@token_app.command("revoke")
def token_revoke(name: Annotated[str, typer.Argument(help="The token's name.")]) -> None:
    """Revoke a token: every request with it is refused from now on."""
    from ..api import tokens

    def action(settings: Settings) -> int:
        engine, sessions = database(settings)
        with sessions() as session, session.begin():
            tokens.revoke(session, name)
            audit.record(
                session, audit.os_user(), audit.Event("token.revoke", "D", detail=f"token {name}")
            )
        engine.dispose()
        out.print(f"token {name} revoked", highlight=False)
        return EXIT_OK

    run(action)


@token_app.command("list")
def token_list() -> None:
    """The tokens issued, their scopes, and whether each is revoked."""
    from ..api import tokens

    def action(settings: Settings) -> int:
        engine, sessions = database(settings)
        table = Table("name", "scopes", "created", "revoked")
        with sessions() as session:
            for row in tokens.listing(session):
                revoked = row.revoked_at.isoformat(" ", "seconds") if row.revoked_at else ""
                created = row.created_at.isoformat(" ", "seconds")
                table.add_row(row.name, row.scopes, created, revoked)
        engine.dispose()
        out.print(table)
        return EXIT_OK

    run(action)


NodesOpt = Annotated[
    list[str] | None, typer.Option("--node", help="A node to search, in order (repeatable).")
]
ModalityOpt = Annotated[
    list[str] | None, typer.Option("--modality", help="A wanted modality (repeatable).")
]
BodyPartOpt = Annotated[
    list[str] | None, typer.Option("--body-part", help="A wanted body part (repeatable).")
]
MaxStudiesOpt = Annotated[int, typer.Option(help="How many priors, newest first.")]
MaxAgeOpt = Annotated[int | None, typer.Option(help="How far back, in days.")]


def _rule(
    nodes: list[str] | None,
    modalities: list[str] | None,
    body_parts: list[str] | None,
    max_studies: int,
    max_age_days: int | None,
) -> prefetch_rules.Rule:
    return prefetch_rules.Rule(
        nodes=list(nodes or []),
        modalities=list(modalities or []),
        body_parts=list(body_parts or []),
        max_studies=max_studies,
        max_age_days=max_age_days,
    )


@rule_app.command("set")
def rule_set(
    name: Annotated[str, typer.Argument(help="The rule's name.")],
    node: NodesOpt = None,
    modality: ModalityOpt = None,
    body_part: BodyPartOpt = None,
    max_studies: MaxStudiesOpt = 3,
    max_age_days: MaxAgeOpt = None,
    rule_file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            help="The whole rule as JSON (conditions on an order's fields, order controls,"
            " values taken from the order, ...), instead of the options above.",
        ),
    ] = None,
) -> None:
    """Store (or replace) a named prefetch rule."""

    def action(settings: Settings) -> int:
        if rule_file is not None:
            if node or modality or body_part:
                raise InvalidRule("--file gives the whole rule: not with --node, --modality")
            rule = prefetch_rules.rule_from_json(rule_file.read_text(encoding="utf-8"))
        else:
            rule = _rule(node, modality, body_part, max_studies, max_age_days)
        engine, sessions = database(settings)
        with sessions() as session, session.begin():
            prefetch_rules.save_rule(session, name, rule)
            audit.record(
                session, audit.os_user(), audit.Event("rule.save", "U", detail=f"rule {name}")
            )
        engine.dispose()
        out.print(f"rule {name}: {rule.model_dump_json()}", highlight=False)
        return EXIT_OK

    run(action)


@rule_app.command("list")
def rule_list() -> None:
    """The stored prefetch rules."""

    def action(settings: Settings) -> int:
        engine, sessions = database(settings)
        with sessions() as session:
            rules = prefetch_rules.list_rules(session)
        engine.dispose()
        for name, rule in rules.items():
            out.print(f"{name}: {rule.model_dump_json()}", highlight=False)
        return EXIT_OK

    run(action)


@app.command()
def prefetch(
    patient_id: Annotated[str, typer.Argument(help="The patient's ID (PatientID).")],
    rule: Annotated[str | None, typer.Option(help="A stored rule's name.")] = None,
    node: NodesOpt = None,
    modality: ModalityOpt = None,
    body_part: BodyPartOpt = None,
    max_studies: MaxStudiesOpt = 3,
    max_age_days: MaxAgeOpt = None,
    accession: Annotated[
        str | None, typer.Option(help="The ordered study's accession (not a prior).")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until it ends.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Fetch a patient's prior studies by a stored rule or by the options given
    (--json: the prefetch as started, or with --wait as it ended)."""
    import time

    def action(settings: Settings) -> int:
        client = Client.from_settings(settings)
        prefetch_id = client.prefetch(
            patient_id,
            rule or _rule(node, modality, body_part, max_studies, max_age_days),
            current_accession=accession,
        )
        audit.write(
            client.sessions,
            audit.os_user(),
            audit.Event(
                "prefetch.start", "C", patient_key=patient_id, detail=f"prefetch {prefetch_id}"
            ),
        )
        (err if as_json else out).print(f"prefetch {prefetch_id} started", highlight=False)
        code = EXIT_OK
        summary = client.prefetch_status(prefetch_id)
        while wait and not summary["ended"]:
            time.sleep(0.5)
            summary = client.prefetch_status(prefetch_id)
        if wait:
            code = {"completed": EXIT_OK, "partial": EXIT_WARNING}.get(
                summary["state"], EXIT_FAILURE
            )
        if as_json:
            print_json(summary)
        elif wait:
            out.print_json(json.dumps(summary))
        client.close()
        return code

    run(action)


@app.command()
def hl7() -> None:
    """Listen for HL7 v2 orders (ORM^O01, OMI^O23) and appointments (SIU^S12) over MLLP;
    each starts the prefetch rule configured for its type (QRFARM_HL7_RULES,
    QRFARM_HL7_DEFAULT_RULE)."""
    from ..hl7.listener import Hl7Service

    def action(settings: Settings) -> int:
        engine, sessions = database(settings)
        service = Hl7Service(
            settings, sessions, dispatcher(settings), SubmitRules.from_settings(settings)
        )
        if settings.metrics_port is not None:
            metrics.serve(settings.metrics_port, settings.metrics_host)
        out.print(
            f"qrfarm HL7 listener on {settings.hl7_host}:{settings.hl7_port}", highlight=False
        )
        asyncio.run(service.run())
        engine.dispose()
        return EXIT_OK

    run(action, service="hl7")
