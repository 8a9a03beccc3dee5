"""qrfarm's errors as HTTP answers, in FastAPI's own 422 shape: the field and the rule."""

from __future__ import annotations

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, OperationalError

from qrfarm.errors import (
    Conflict,
    DatabaseNotReady,
    FieldError,
    InvalidCallback,
    InvalidIdentifier,
    InvalidNode,
    NoSuchJob,
    NoSuchPrefetch,
    NoSuchRetrieval,
    NoSuchRule,
    NotFound,
    NotRetriable,
    PermanentError,
    TargetNotAllowed,
)


def unprocessable(loc: list[str | int], msg: str, kind: str) -> JSONResponse:
    return JSONResponse(
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        content={"detail": [{"loc": loc, "msg": msg, "type": kind}]},
    )


def install(app: FastAPI) -> None:
    @app.exception_handler(InvalidIdentifier)
    def _identifier(_r: Request, exc: InvalidIdentifier) -> JSONResponse:
        return unprocessable(["body", "identifier", exc.attribute], exc.rule, "invalid_identifier")

    @app.exception_handler(InvalidCallback)
    def _callback(_r: Request, exc: InvalidCallback) -> JSONResponse:
        return unprocessable(["body", "callback_url"], exc.rule, "invalid_callback")

    @app.exception_handler(FieldError)
    def _field(_r: Request, exc: FieldError) -> JSONResponse:
        return unprocessable(exc.loc, exc.rule, "invalid_value")

    @app.exception_handler(InvalidNode)
    @app.exception_handler(TargetNotAllowed)
    def _node(_r: Request, exc: PermanentError) -> JSONResponse:
        return unprocessable(["body"], str(exc), "invalid_node")

    @app.exception_handler(NoSuchJob)
    @app.exception_handler(NoSuchPrefetch)
    @app.exception_handler(NoSuchRule)
    @app.exception_handler(NoSuchRetrieval)
    @app.exception_handler(NotFound)
    def _not_found(_r: Request, exc: PermanentError) -> JSONResponse:
        return JSONResponse(status_code=status.HTTP_404_NOT_FOUND, content={"detail": str(exc)})

    @app.exception_handler(NotRetriable)
    @app.exception_handler(Conflict)
    def _conflict(_r: Request, exc: PermanentError) -> JSONResponse:
        return JSONResponse(status_code=status.HTTP_409_CONFLICT, content={"detail": str(exc)})

    @app.exception_handler(DataError)
    def _data(_r: Request, exc: DataError) -> JSONResponse:
        # A value the database cannot hold (a NUL character in a text).
        return unprocessable(["request"], str(exc.orig).splitlines()[0], "invalid_value")

    @app.exception_handler(PermanentError)
    def _permanent(_r: Request, exc: PermanentError) -> JSONResponse:
        # Any other refusal of the request as it is (the more specific
        # handlers above win: Starlette looks handlers up along the MRO).
        return unprocessable(["body"], str(exc), "invalid_request")

    @app.exception_handler(DatabaseNotReady)
    @app.exception_handler(OperationalError)
    def _unavailable(_r: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            content={"detail": f"the database is not available: {type(exc).__name__}"},
        )
