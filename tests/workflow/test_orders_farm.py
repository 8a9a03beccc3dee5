"""HL7 orders through a running farm: patient identity across PACS and order control.

Shown with real peers: an ORM whose PID-3 carries identifiers of two
authorities finds priors only on the node of the matching authority (the
other node, holding the same ID text for another person, is not searched,
and the prefetch says why; an answer under another issuer on the searched
node is left out); ORC-1 CA cancels a running prefetch, its move stopped by
C-CANCEL (counted at the sandbox PACS); a rule condition skips inpatient
orders.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import select

from qrfarm.jobs import profiles
from qrfarm.models import Job, JobKind, JobState, NodeRecord, Prefetch, ReceivedInstance
from qrfarm.workflow.rules import Rule, load_rule, save_rule

from .conftest import BY_NUMBER, RULE, OrderFarm, order


def _prefetch_id(text: str) -> int:
    assert text.startswith("prefetch "), text
    return int(text.split()[1])


def _moved(order_farm: OrderFarm, prefetch_id: int) -> set[str]:
    with order_farm.farm.client.sessions() as session:
        moves = session.scalars(
            select(Job).where(Job.prefetch_id == prefetch_id, Job.kind == JobKind.MOVE)
        )
        return {job.identifier["0020000D"]["Value"][0] for job in moves}


def test_priors_are_found_only_on_the_node_of_the_matching_authority(
    order_farm: OrderFarm,
) -> None:
    # PA1 of HOSP_A, and an ID of a third authority no node holds; pacs-b
    # (HOSP_B) holds a PA1 too: another person.
    code, text = order_farm.send(order("ID-1", "PA1^^^HOSP_A^MR~Q77^^^HOSP_C^MR", placer="PL-ID-1"))
    assert code == "AA", text
    summary = order_farm.wait_prefetch(_prefetch_id(text))
    assert summary["state"] == "completed", summary
    # Only pacs-a was searched, with the HOSP_A identifier.
    assert [(j["kind"], j["node"]) for j in summary["jobs"] if j["kind"] == "find"] == [
        ("find", "pacs-a")
    ]
    assert summary["node_notes"]["pacs-b"] == (
        "not searched: no patient identifier of its issuer HOSP_B"
    )
    # Study 2 is PA1 of HOSP_X on pacs-a: left out, and said.
    assert summary["node_notes"]["pacs-a"] == (
        "1 answer(s) of another patient ID or issuer left out"
    )
    assert _moved(order_farm, summary["id"]) == {BY_NUMBER[1].uid, BY_NUMBER[3].uid}
    with order_farm.farm.client.sessions() as session:
        studies = set(session.scalars(select(ReceivedInstance.study_instance_uid)))
        node = session.scalar(select(NodeRecord).where(NodeRecord.name == "pacs-a"))
        assert node is not None
        # Orthanc fills in Issuer of Patient ID: learned, so later finds match on it.
        assert profiles.trait(session, node.id, profiles.ANSWERS_ISSUER) is True
    assert BY_NUMBER[4].uid not in studies and BY_NUMBER[2].uid not in studies
    assert "PA1" not in order_farm.farm.logs()


def test_an_order_of_an_authority_no_node_holds_searches_nowhere_and_says_why(
    order_farm: OrderFarm,
) -> None:
    code, text = order_farm.send(order("ID-2", "Q77^^^HOSP_C^MR", placer="PL-ID-2"))
    assert code == "AA", text
    summary = order_farm.farm.client.prefetch_status(_prefetch_id(text))
    assert summary["state"] == "failed"
    assert summary["jobs"] == []
    assert summary["error"] == (
        "no node searched (pacs-a: not searched: no patient identifier of its issuer HOSP_A;"
        " pacs-b: not searched: no patient identifier of its issuer HOSP_B)"
    )


def test_orc_ca_cancels_a_running_prefetch_with_c_cancel_at_the_pacs(
    order_farm: OrderFarm,
) -> None:
    with order_farm.farm.client.sessions() as session, session.begin():
        save_rule(session, RULE, Rule(nodes=["sandbox"], modalities=["CT"]))
    try:
        code, text = order_farm.send(order("CA-1", "PS1^^^HOSP_S^MR", placer="PL-CA-1"))
        assert code == "AA", text
        prefetch_id = _prefetch_id(text)
        move = _wait_for_running_move(order_farm, prefetch_id)
        cancels_before = order_farm.sandbox.behaviour.stats.cancels
        code, text = order_farm.send(
            order("CA-2", "PS1^^^HOSP_S^MR", control="CA", placer="PL-CA-1")
        )
        assert (code, text) == ("AA", f"cancelled prefetch {prefetch_id}")
        ended = order_farm.farm.wait(move)
    finally:
        with order_farm.farm.client.sessions() as session, session.begin():
            save_rule(session, RULE, Rule(nodes=["pacs-a", "pacs-b"], modalities=["CT"]))
    assert ended["state"] == "cancelled", ended
    # The move stopped early: fewer than the study's six instances arrived.
    assert ended["recorded"] < BY_NUMBER[8].instances
    assert order_farm.sandbox.behaviour.stats.cancels > cancels_before
    summary = order_farm.farm.client.prefetch_status(prefetch_id)
    assert (summary["state"], summary["error"]) == ("cancelled", "cancelled by order control CA")


def _wait_for_running_move(order_farm: OrderFarm, prefetch_id: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with order_farm.farm.client.sessions() as session:
            move = session.scalar(
                select(Job).where(
                    Job.prefetch_id == prefetch_id,
                    Job.kind == JobKind.MOVE,
                    Job.state == JobState.RUNNING,
                    Job.recorded_count > 0,
                )
            )
            if move is not None:
                return move.id
        time.sleep(0.2)
    print(order_farm.farm.logs())
    raise AssertionError("no move of the prefetch was running")


def test_a_rule_condition_skips_inpatient_orders(order_farm: OrderFarm) -> None:
    with order_farm.farm.client.sessions() as session, session.begin():
        save_rule(
            session,
            RULE,
            Rule(
                nodes=["pacs-a", "pacs-b"],
                modalities=["CT"],
                when=[{"field": "patient_class", "none_of": ["I"]}],  # type: ignore[list-item]
            ),
        )
        before = session.scalar(select(Prefetch.id).order_by(Prefetch.id.desc()).limit(1))
    try:
        inpatient = order_farm.send(
            order("IN-1", "PB9^^^HOSP_B^MR", placer="PL-IN-1", patient_class="I")
        )
        outpatient = order_farm.send(order("IN-2", "PB9^^^HOSP_B^MR", placer="PL-IN-2"))
    finally:
        with order_farm.farm.client.sessions() as session, session.begin():
            save_rule(session, RULE, Rule(nodes=["pacs-a", "pacs-b"], modalities=["CT"]))
    assert inpatient == ("AA", "not prefetched: the rule wants patient_class is none of I")
    assert outpatient[0] == "AA"
    with order_farm.farm.client.sessions() as session:
        made = list(session.scalars(select(Prefetch.id).where(Prefetch.id > (before or 0))))
    assert made == [_prefetch_id(outpatient[1])]
    summary = order_farm.wait_prefetch(made[0])
    # PB9 of HOSP_B: found on pacs-b (dcmqrscp) only.
    assert summary["state"] == "completed", summary
    assert _moved(order_farm, made[0]) == {BY_NUMBER[5].uid}


def test_a_rule_with_conditions_is_stored_from_a_json_file_and_a_bad_one_refused(
    order_farm: OrderFarm, tmp_path: Path
) -> None:
    good = tmp_path / "good.json"
    good.write_text(
        json.dumps(
            {
                "nodes": ["pacs-a"],
                "when": [{"field": "PV1-2", "none_of": ["I"]}],
                "order_controls": ["NW", "XO"],
                "modality_from": "modality",
            }
        )
    )
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"nodes": ["pacs-a"], "when": [{"field": "ward", "any_of": ["3"]}]}))
    stored = _cli(order_farm, "prefetch-rule", "set", "from-file", "--file", str(good))
    refused = _cli(order_farm, "prefetch-rule", "set", "refused", "--file", str(bad))
    assert stored.returncode == 0, stored.stderr
    with order_farm.farm.client.sessions() as session:
        rule = load_rule(session, "from-file")
    assert (rule.when[0].field, rule.order_controls, rule.modality_from) == (
        "PV1-2",
        ["NW", "XO"],
        "modality",
    )
    assert refused.returncode != 0
    assert "when.0.field" in refused.stderr and "'ward' is not a field" in refused.stderr


def _cli(order_farm: OrderFarm, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qrfarm.cli", *argv],
        env={**os.environ, **order_farm.farm.env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_client_prefetch_with_identifiers_of_two_authorities_searches_each_node_with_its_own(
    order_farm: OrderFarm,
) -> None:
    rule = Rule(nodes=["pacs-a", "pacs-b"], modalities=["CT"], max_studies=5)
    client = order_farm.farm.client
    both = client.prefetch("PB9", rule, patient_identifiers=[("PB9", "HOSP_B"), ("PA1", "HOSP_A")])
    summary = order_farm.wait_prefetch(both)
    assert summary["state"] == "completed", summary
    with client.sessions() as session:
        finds = {
            job.identifier["00100020"]["Value"][0]
            for job in session.scalars(
                select(Job).where(
                    Job.prefetch_id == both, Job.kind == JobKind.FIND, Job.level == "STUDY"
                )
            )
        }
    assert finds == {"PA1", "PB9"}
    assert {s["study_instance_uid"] for s in summary["selected"]} == {
        BY_NUMBER[1].uid,
        BY_NUMBER[3].uid,
        BY_NUMBER[5].uid,
    }
    # An ID of no known authority goes only to nodes without an issuer: none here.
    bare = client.prefetch_status(client.prefetch("PB9", rule))
    assert bare["state"] == "failed" and bare["jobs"] == []
    assert "no patient identifier of its issuer HOSP_B" in bare["error"]
