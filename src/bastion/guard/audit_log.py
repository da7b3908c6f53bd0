"""Append-only audit log of every request: id, time, caller, input digest, decisions and results.

The raw input is never stored: only its SHA-256 over a canonical encoding (:func:`digest_input`).
The caller is the *name* of the API key that made the request (never the key or its hash).
SQLite is the default (``AuditLog.open("audit.db")``): a table in a WAL-mode database with
triggers that abort any UPDATE or DELETE. An ``append`` that returned has been written to the OS
in this process's pending file (``audit.db.pending-*``, next to the database), so it survives
the process being killed, ``kill -9`` included; ``synchronous="FULL"`` also syncs it, to survive
an OS crash or power loss. A background thread moves pending rows into the table in batches
(within ``INGEST_INTERVAL``, 0.1 s) and deletes a pending file once all its rows are in; the next
open replays what a killed process left (see :mod:`bastion.guard._audit_sqlite`). Concurrent
appends share one write (and one sync). ``rows``, ``len`` and ``export_jsonl`` see every row
appended before them. ``AuditLog.open("postgresql://...")`` shares one log between replicas
(needs ``psycopg``). Logs written before the ``api_key`` column existed are migrated when opened
(the column is added; old rows have no caller).

Example:
    >>> import tempfile, pathlib, torch
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "audit.db"
    >>> with AuditLog.open(path) as log:
    ...     log.append(AuditRecord.create(inputs=torch.zeros(2, 3), prediction=[0, 1]))
    ...     [r.prediction for r in log.rows()]
    [[0, 1]]
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch

from bastion.core.atomic import atomic_open
from bastion.core.enums import parse_enum
from bastion.core.errors import ConfigurationError, InputValidationError
from bastion.core.results import Result
from bastion.guard._audit_inputs import digest_input, since_text
from bastion.guard._audit_time import now_text as _now
from bastion.guard._json_text import JsonText, canonical_text, object_text

__all__ = ["AuditLog", "AuditRecord", "Outcome", "digest_input"]


class Outcome(enum.Enum):
    """What the server did with a request."""

    ANSWERED = "answered"
    REFUSED = "refused"


@dataclasses.dataclass(frozen=True, kw_only=True)
class AuditRecord(Result):
    """One request as recorded.

    Attributes:
        request_id: unique id of the request.
        time: UTC ISO-8601 time with milliseconds.
        input_digest: :func:`digest_input` of the request's input.
        api_key: the name of the API key that made the request (None when unknown); never the
            key itself nor its digest.
        outcome: answered or refused.
        reason: why a request was refused (None when answered).
        validation: the validation result (JSON values), if any.
        prediction: what the model answered (JSON values), if anything.
        checks: output check results.
        monitors: monitor results of this request's batch.
    """

    request_id: str
    time: str
    input_digest: str
    api_key: str | None = None
    outcome: Outcome = Outcome.ANSWERED
    reason: str | None = None
    validation: Any = None
    prediction: Any = None
    checks: Any = None
    monitors: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.outcome, Outcome):
            object.__setattr__(self, "outcome", parse_enum(Outcome, self.outcome, "outcome"))
        # The free-form fields become JSON values once, here, so that to_dict is a flat copy
        # instead of a second walk of every nested value. One C-codec round trip of the whole
        # record: its text (sorted keys, what the log stores) is kept for AuditLog.append,
        # which then encodes nothing. (A server's answered rows skip the record altogether:
        # AuditLog.append_answered.)
        text = canonical_text(self._fields_dict())
        values = json.loads(text)
        for name in _FREE_FORM:
            object.__setattr__(self, name, values[name])
        object.__setattr__(self, "_text", text)

    def _fields_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "request_id": self.request_id,
            "time": self.time,
            "input_digest": self.input_digest,
            "api_key": self.api_key,
            "outcome": self.outcome.value,
            "reason": self.reason,
            "validation": self.validation,
            "prediction": self.prediction,
            "checks": self.checks,
            "monitors": self.monitors,
        }

    def stored_text(self) -> str:
        """The record as the log stores it: JSON of :meth:`to_dict` with sorted keys."""
        text: str = self.__dict__["_text"]  # set by __post_init__ (not a dataclass field)
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON values with stable keys (the free-form fields were converted on creation)."""
        return self._fields_dict()

    @classmethod
    def create(
        cls,
        *,
        inputs: torch.Tensor | np.ndarray | bytes | str,
        request_id: str | None = None,
        api_key: str | None = None,
        outcome: Outcome | str = Outcome.ANSWERED,
        reason: str | None = None,
        validation: Any = None,
        prediction: Any = None,
        checks: Any = None,
        monitors: Sequence[Any] | None = None,
    ) -> AuditRecord:
        """Build a record now: digests ``inputs`` and turns results into JSON values.

        Raises:
            ConfigurationError: ``outcome`` is not ``"answered"`` or ``"refused"``.
            InputValidationError: ``inputs`` cannot be digested (see :func:`digest_input`).
        """
        return cls(
            request_id=request_id or uuid.uuid4().hex,
            time=_now(),
            input_digest=digest_input(inputs),
            api_key=api_key,
            outcome=parse_enum(Outcome, outcome, "outcome"),
            reason=reason,
            validation=validation,
            prediction=prediction,
            checks=checks,
            monitors=list(monitors) if monitors is not None else None,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditRecord:
        """Inverse of :meth:`to_dict`.

        Raises:
            InputValidationError: ``data`` is not a mapping, lacks a required key, or its
                outcome is neither ``"answered"`` nor ``"refused"``.
        """
        if not isinstance(data, Mapping):
            raise _bad_record(f"an audit record must be a mapping, got {type(data).__name__}")
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise _bad_record(f"an audit record needs the key(s) {missing}; got "
                              f"{sorted(map(str, data))[:12]}")
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        try:
            values["outcome"] = parse_enum(Outcome, values.get("outcome", "answered"), "outcome")
        except ConfigurationError as error:
            raise _bad_record(f"audit record: {error}") from None
        return cls(**values)


_REQUIRED = ("request_id", "time", "input_digest")


def _bad_record(message: str) -> InputValidationError:
    return InputValidationError(message, violations=[message])


_FREE_FORM = ("validation", "prediction", "checks", "monitors")
_KEYS_SORTED = tuple(
    (name, object_text([(name, "")])[1:-1])  # '"name": ', as json.dumps writes a key
    for name in sorted(("schema_version", "request_id", "time", "input_digest", "api_key",
                        "outcome", "reason", *_FREE_FORM))
)


def _answered_template() -> str:
    """The stored text of an answered record, with ``%s`` where its per-request values go."""
    fixed = {"outcome": canonical_text(Outcome.ANSWERED.value), "reason": "null",
             "schema_version": str(AuditRecord.schema_version)}
    return "{" + ", ".join(
        head + (fixed[name].replace("%", "%%") if name in fixed else "%s")
        for name, head in _KEYS_SORTED
    ) + "}"


_ANSWERED = _answered_template()
_ANSWERED_OUTCOME = Outcome.ANSWERED.value
_ANSWERED_SLOTS = tuple(n for n, _ in _KEYS_SORTED
                        if n not in ("outcome", "reason", "schema_version"))
# the order AuditLog.append_answered fills them in
assert _ANSWERED_SLOTS == ("api_key", "checks", "input_digest", "monitors", "prediction",
                           "request_id", "time", "validation"), _ANSWERED_SLOTS


class AuditLog:
    """An append-only audit log; use :meth:`open` to get one.

    Appends are thread-safe and committed when they return (they survive the process being
    killed; with ``synchronous="FULL"`` also a power loss). There is no update or delete API, and
    the database itself refuses UPDATE and DELETE on the table.
    """

    _BACKEND_METHODS = ("append", "close", "count", "records")

    def __init__(self, backend: Any) -> None:
        missing = [m for m in self._BACKEND_METHODS if not callable(getattr(backend, m, None))]
        if missing:  # e.g. a path passed where AuditLog.open takes it: refuse now, not mid-append
            raise ConfigurationError(
                f"AuditLog takes a storage backend, got {type(backend).__name__} (no "
                f"{', '.join(missing)}); open a log with AuditLog.open(path_or_url)"
            )
        self._backend = backend

    @classmethod
    def open(cls, target: str | os.PathLike[str], *, synchronous: str = "NORMAL") -> AuditLog:
        """Open (creating if needed) a log: a file path or ``sqlite:///path``, or ``postgresql://``.

        Args:
            target: the SQLite path or URL, or a PostgreSQL URL.
            synchronous: SQLite only (case-insensitive). ``"NORMAL"`` (default): every row is
                written to the OS before ``append`` returns, so an acknowledged row survives
                the server process dying (``kill -9``, OOM killer, a crash); an OS crash or
                power loss may lose the last rows. ``"FULL"``: also syncs every append (and
                the table's commits), so acknowledged rows survive power loss; it costs one
                sync per append group (0.2-4 ms on a busy disk). Concurrent appends share one
                write and one sync either way.

        Raises:
            ConfigurationError: ``target`` is not a string or path, an unknown URL scheme, or
                ``psycopg`` missing for PostgreSQL.
        """
        if not isinstance(target, (str, os.PathLike)):
            raise ConfigurationError(
                f"AuditLog.open takes a file path or URL (str or path), got {target!r:.80}")
        text = os.fspath(target)
        if not isinstance(text, str):  # a PathLike of bytes
            raise ConfigurationError(f"AuditLog.open takes a str path, got {text!r:.80}")
        scheme = text.split("://", 1)[0].lower() if "://" in text else ""
        if scheme in ("postgresql", "postgres"):
            from bastion.guard._audit_postgres import PostgresBackend

            return cls(PostgresBackend(text))
        if scheme == "sqlite":
            text = text[len("sqlite:///") :] if text.startswith("sqlite:///") else ""
            if not text:
                raise ConfigurationError("sqlite URLs look like sqlite:///path/to/audit.db")
        elif scheme:
            raise ConfigurationError(
                f"unsupported audit log URL scheme {scheme!r}; use a file path, sqlite:///path or "
                "postgresql://user@host/db"
            )
        from bastion.guard._audit_sqlite import SQLiteBackend

        return cls(SQLiteBackend(Path(text), synchronous=synchronous))

    def append(self, record: AuditRecord) -> None:
        """Append one record; returns only once it is durable (written to the OS; with
        ``synchronous="FULL"``, synced too).

        Raises:
            InputValidationError: the request id is already in the log (nothing is written).
        """
        self._backend.append(
            record.request_id,
            record.time,
            record.outcome.value,
            record.api_key,
            record.stored_text(),
        )

    def append_answered(
        self,
        *,
        inputs: torch.Tensor | np.ndarray | bytes | str,
        request_id: str,
        api_key: str | None,
        validation: JsonText | None,
        prediction: JsonText,
        checks: JsonText | None,
        monitors: JsonText | None,
        fresh_id: bool = False,
    ) -> None:
        """Append an answered request from pieces encoded already, without building an
        :class:`AuditRecord`: what a server's request path does. Stores exactly what
        ``append(AuditRecord.create(...))`` with the same values would.

        ``fresh_id=True`` says the caller minted ``request_id`` for this request from a random
        UUID (as ``bastion serve`` does): the SQLite backend then skips looking the id up among
        the stored rows (one index lookup per request). Ids not yet moved into the table are
        still checked; a repeat of a stored id would be caught when the row is moved in, logged
        as a conflict with the pending file kept.

        Raises:
            InputValidationError: the request id is already in the log (nothing is written).
        """
        time = _now()
        text = _ANSWERED % (  # the slots in key order (checked below the template)
            canonical_text(api_key),
            "null" if checks is None else checks.text,
            f'"{digest_input(inputs)}"',  # hex digits: nothing to escape
            "null" if monitors is None else monitors.text,
            prediction.text,
            canonical_text(request_id),
            f'"{time}"',  # ISO 8601 digits and separators: nothing to escape
            "null" if validation is None else validation.text,
        )
        self._backend.append(request_id, time, _ANSWERED_OUTCOME, api_key, text,
                             fresh_id=fresh_id)

    def rows(
        self,
        *,
        since: dt.datetime | str | None = None,
        limit: int | None = None,
        api_key: str | None = None,
    ) -> list[AuditRecord]:
        """Records in append order: from time ``since`` on, at most ``limit``, of one key name.

        Args:
            since: a timezone-aware datetime or an ISO-8601 string with an offset (``Z`` too).
            limit: an int >= 0, or None for all.
            api_key: the key name, or None for every caller.

        Raises:
            ConfigurationError: an argument is none of the above.
        """
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)
                                  or limit < 0):
            raise ConfigurationError(f"limit must be an int >= 0 or None, got {limit!r:.80}")
        return [AuditRecord.from_dict(json.loads(t)) for t in self._iter(since, limit, api_key)]

    def __len__(self) -> int:
        return int(self._backend.count())

    def export_jsonl(
        self,
        path: str | Path,
        *,
        since: dt.datetime | str | None = None,
        api_key: str | None = None,
    ) -> int:
        """Write records as JSON lines to ``path`` atomically; returns how many were written.

        Each line is the record as stored, with ``api_key`` (``null`` for rows written before
        the column existed; only those lines are re-encoded).
        """
        n = 0
        with atomic_open(path, 0o600) as handle:
            for text in self._iter(since, None, api_key):
                data = json.loads(text)
                if "api_key" not in data:
                    data["api_key"] = None
                    text = json.dumps(data, sort_keys=True, allow_nan=False)
                handle.write(text.encode("utf-8") + b"\n")
                n += 1
        return n

    def _iter(
        self, since: dt.datetime | str | None, limit: int | None, api_key: str | None
    ) -> Iterator[str]:
        if api_key is not None and not isinstance(api_key, str):
            raise ConfigurationError(f"api_key must be a key name (str) or None, got "
                                     f"{api_key!r:.80}")
        return iter(self._backend.records(since_text(since), limit, api_key))

    def close(self) -> None:
        """Close the underlying connection(s)."""
        self._backend.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
