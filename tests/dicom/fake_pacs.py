"""Small pure-Python peers that misbehave on purpose, for edge cases no real PACS shows.

Each runs a pynetdicom AE on 127.0.0.1 with handlers given by the test.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom import association as association_module
from pynetdicom.dimse_primitives import C_MOVE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from qrfarm.dicom import Node

Handler = Callable[..., Any]


@contextmanager
def fake_pacs(
    handlers: list[tuple[Any, Handler]],
    ae_title: str = "FAKEPACS",
    move_script: MoveScript | None = None,
) -> Iterator[Node]:
    """A pynetdicom Q/R SCP with the given event handlers; yields its Node."""
    ae = AE(ae_title=ae_title)
    if move_script is not None:
        ae.move_script = move_script  # type: ignore[attr-defined]
    for uid in (
        Verification,
        StudyRootQueryRetrieveInformationModelFind,
        PatientRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelGet,
        StudyRootQueryRetrieveInformationModelMove,
    ):
        ae.add_supported_context(uid)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    port = server.socket.getsockname()[1]  # type: ignore[union-attr]
    try:
        yield Node(ae_title, "127.0.0.1", port)
    finally:
        server.shutdown()


@contextmanager
def silent_listener() -> Iterator[Node]:
    """A TCP listener that accepts connections and never says a word."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
                accepted.append(conn)
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield Node("SILENT", "127.0.0.1", listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(2)
        for conn in accepted:
            conn.close()
        listener.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# A C-MOVE SCP that sends exactly the responses a test scripts, counts and
# all, without sending any sub-operation: pynetdicom's own Move SCP fills in
# counts and needs a reachable destination, so it cannot play a PACS that
# leaves counts out. Installed by patching pynetdicom's service lookup for
# the AEs that carry a script only.
MoveScript = Callable[[Any], list[tuple[Dataset, Dataset | None]]]


class ScriptedMoveService:
    def __init__(self, assoc: Any) -> None:
        self.assoc = assoc

    def SCP(self, req: Any, context: Any) -> None:  # noqa: N802 - pynetdicom's name
        script: MoveScript = self.assoc.ae.move_script
        for status, identifier in script(req):
            rsp = C_MOVE()
            rsp.MessageIDBeingRespondedTo = req.MessageID
            rsp.AffectedSOPClassUID = req.AffectedSOPClassUID
            for elem in status:
                setattr(rsp, elem.keyword, elem.value)
            if identifier is not None:
                ts = context.transfer_syntax[0]
                rsp.Identifier = BytesIO(
                    encode(identifier, ts.is_implicit_VR, ts.is_little_endian)  # type: ignore[arg-type]
                )
            self.assoc.dimse.send_msg(rsp, context.context_id)


@contextmanager
def scripted_move_pacs(script: MoveScript) -> Iterator[Node]:
    original = association_module.uid_to_service_class

    def lookup(uid: str) -> Any:
        if uid == StudyRootQueryRetrieveInformationModelMove:
            return _dispatch
        return original(uid)

    def _dispatch(assoc: Any) -> Any:
        if hasattr(assoc.ae, "move_script"):
            return ScriptedMoveService(assoc)
        return original(StudyRootQueryRetrieveInformationModelMove)(assoc)

    association_module.uid_to_service_class = lookup  # type: ignore[assignment]
    try:
        with fake_pacs([], move_script=script) as node:
            yield node
    finally:
        association_module.uid_to_service_class = original
