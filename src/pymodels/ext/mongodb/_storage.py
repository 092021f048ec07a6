"""The MongoDB storage: one collection, pymongo, sessions for transactions."""

from __future__ import annotations

import contextlib
import datetime
import itertools
import os
import re
import threading
import time
from collections.abc import Generator, Iterable, Iterator, Mapping
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit, urlunsplit

import pydantic

try:
    import pymongo
    import pymongo.errors
    from bson import ObjectId
    from bson.codec_options import CodecOptions
    from pymongo.client_session import ClientSession
    from pymongo.collection import Collection
    from pymongo.write_concern import WriteConcern
except ImportError as e:  # pragma: no cover - depends on the environment
    from ...backend import BackendUnavailable

    raise BackendUnavailable(
        f"pymodels.ext.mongodb needs pymongo ({e}): pip install 'pymodels[mongodb]'"
    ) from e

from ...backend import (
    INT_MAX,
    INT_MIN,
    MISSING,
    OPS,
    BaseQuery,
    BaseSettings,
    BaseStorage,
    BulkWriteError,
    Change,
    Compiled,
    ConfigurationError,
    ConnectionFailed,
    Features,
    IndexSpec,
    IntegrityError,
    Item,
    LockTimeout,
    Lookup,
    NotSupported,
    OrderKey,
    PyModelsError,
    StorageNotFound,
    batch_has_documents,
    batch_records,
    sort_items,
)
from ._compiler import (
    NOT_ARRAY,
    NUMBER_TYPES,
    compile_condition,
    dotted,
    exact_equals,
    valid_path,
)
from ._encoding import TAG, decode_record, encode_record, encode_value
from ._query import (
    DANGER,
    FIRST_BATCH,
    Query,
    classes_of,
    holds_guards,
    kinds_seen,
    loosen,
    mixed_types,
    other_types,
    page_pipeline,
    sort_spec,
    stages,
    tie_key,
)

__all__ = ["META_COLLECTION", "Settings", "Storage", "features"]

#: Ops whose filter is exact for every value.
NATIVE_OPS = frozenset({"exists", "startswith", "year"})

features = Features(
    ops={op: "native" if op in NATIVE_OPS else "prefilter" for op in OPS},
    # Decided per storage from the server's hello (a replica set or mongos):
    # Storage.features is replaced by an instance attribute saying so.
    transactions=True,
    indexes=True,
    unique_indexes=True,
    compound_indexes=True,
    partial_update=True,
    thread_safe=True,
    fork_safe=True,
    concurrent_processes=True,
    # The client's SIGKILL (the suite's kill test, run against SecantusDB): every
    # write the server acknowledged is there, a transaction whole or not at all.
    # The server's own crash is the server's journal's business: the default
    # write concern is majority and journaled (docs/mongodb.md).
    crash_safe=True,
    persistent=True,
    networked=True,
)

#: Matches a small ordered page reads, to know their kinds without a probe (_checked_order).
SMALL_PAGE = 256
#: Records a small page reads past its end, for the ties with its last record (_facet_page).
TIE_ROOM = 64
#: Documents per reply of a cursor (find and each getMore). Without it the server fills
#: every getMore reply up to 16 MB, which pymongo decodes at once: about 100,000 small
#: records, some 130 MB of Python objects held while a query streams (bench/stream.py).
#: The server still caps a reply at 16 MB, so large records come in fewer per reply.
STREAM_BATCH = 1000

#: Server error codes for a reply document over the size limit (BSONObjectTooLarge,
#: the aggregation result and $facet output limits).
_TOO_LARGE = frozenset({10334, 16389, 4031700})

#: The collection holding the library's own data (one document per collection of records).
META_COLLECTION = "pymodels_meta"
FORMAT_VERSION = 1
COLLECTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,119}")
_HEX24 = re.compile(r"[0-9a-f]{24}")
#: URL parameters that are pymodels settings, removed before pymongo sees the URL.
OWN_PARAMETERS = ("collection", "read_only", "timeout")
UTC = datetime.UTC
WRITE_CONFLICT = 112
_CODEC: CodecOptions[Any] = CodecOptions(tz_aware=True, tzinfo=UTC)


class Settings(BaseSettings):
    """Settings of the MongoDB backend: a URL, or host/port/database, or a ready client."""

    model_config = pydantic.ConfigDict(arbitrary_types_allowed=True)

    #: Any MongoDB connection string (replica sets, read preference, TLS, credentials).
    url: str | None = None
    host: str | None = None
    port: int | None = None
    #: The database (default: the URL's, else "pymodels").
    database: str | None = None
    #: The collection holding this storage's records.
    collection: str = "documents"
    #: Seconds to find a server before ConnectionFailed (serverSelectionTimeoutMS).
    timeout: float = 10.0
    #: Seconds to wait for a connection and for each answer (None: pymongo's defaults).
    connect_timeout: float | None = None
    socket_timeout: float | None = None
    #: A ready pymongo.MongoClient (then url, host and port must be absent); not closed by close().
    client: Any = None

    @pydantic.field_validator("collection")
    @classmethod
    def _collection_name(cls, value: str) -> str:
        if not COLLECTION_NAME.fullmatch(value) or value.startswith("system."):
            raise ValueError("must be a plain collection name (letters, digits, _ . -)")
        if value == META_COLLECTION:
            raise ValueError(f"{META_COLLECTION} is the library's own collection")
        return value


def _hosts_of(client: Any) -> list[str]:
    try:
        return [f"{h}:{p}" for h, p in client.topology_description.server_descriptions()]
    except Exception:
        return []


class Storage(BaseStorage):
    """Records as documents of one MongoDB collection."""

    features: ClassVar[Features] = features
    query_class: ClassVar[type[BaseQuery[Any]]] = Query
    settings_class: ClassVar[type[BaseSettings]] = Settings
    url_schemes: ClassVar[tuple[str, ...]] = ("mongodb", "mongodb+srv", "mongo")
    settings: Settings

    @classmethod
    def settings_from_url(cls, url: str) -> dict[str, Any]:
        """``mongodb://host:27017/db?collection=people``: pymodels' parameters come out."""
        parts = urlsplit(url)
        own: dict[str, Any] = {}
        rest: list[str] = []
        for item in parts.query.split("&") if parts.query else ():
            key, _, value = item.partition("=")
            if unquote(key) in OWN_PARAMETERS:
                own[unquote(key)] = unquote(value)
            else:
                rest.append(item)  # as written: pymongo parses its own options
        if parts.scheme == "mongo":
            parts = parts._replace(scheme="mongodb")
        return {"url": urlunsplit(parts._replace(query="&".join(rest))), **own}

    @property
    def location(self) -> str | None:
        """Servers, database and collection, for people (never credentials)."""
        hosts = ",".join(_hosts_of(self._client)) or self._given_host()
        return f"{hosts}/{self._db.name}?collection={self._coll.name}"

    # ------------------------------------------------------------ connection

    def _open(self) -> None:
        s = self.settings
        self._tx = threading.local()
        #: Sort specs whose last small page had more ties than TIE_ROOM (_facet_page).
        self._tie_hints: set[tuple[tuple[str, int], ...]] = set()
        self._owned = s.client is None
        if s.client is not None:
            if s.url is not None or s.host is not None or s.port is not None:
                raise ConfigurationError("give setting 'client' or 'url'/'host'/'port', not both")
            if not isinstance(s.client, pymongo.MongoClient):
                raise ConfigurationError("setting 'client' must be a pymongo.MongoClient")
        elif s.url is not None and (s.host is not None or s.port is not None):
            raise ConfigurationError("give setting 'url' or 'host'/'port', not both")
        self._pid = os.getpid()
        self._client: Any = s.client if s.client is not None else self._connect()
        try:
            self._init()
        except BaseException:
            self._close()
            raise

    def _connect(self) -> Any:
        s = self.settings
        options: dict[str, Any] = {"serverSelectionTimeoutMS": max(1, int(s.timeout * 1000))}
        if s.connect_timeout is not None:
            options["connectTimeoutMS"] = max(1, int(s.connect_timeout * 1000))
        if s.socket_timeout is not None:
            options["socketTimeoutMS"] = max(1, int(s.socket_timeout * 1000))
        try:
            if s.url is not None:
                return pymongo.MongoClient(s.url, **options)
            return pymongo.MongoClient(s.host or "localhost", s.port or 27017, **options)
        except pymongo.errors.ConfigurationError as e:
            raise ConfigurationError(f"mongodb: bad connection settings: {e}") from e
        except (pymongo.errors.PyMongoError, ValueError, TypeError) as e:
            raise ConfigurationError(f"mongodb: bad connection settings: {e}") from e

    def _init(self) -> None:
        s = self.settings
        name = s.database
        if name is None and s.url is not None:
            with contextlib.suppress(pymongo.errors.ConfigurationError):
                name = self._client.get_default_database().name
        self._db = self._client.get_database(
            name or "pymodels", codec_options=_CODEC, write_concern=self._write_concern()
        )
        self._coll: Collection[Any] = self._db.get_collection(s.collection)
        self._meta = self._db.get_collection(META_COLLECTION)
        with self._guard():
            hello = self._client.admin.command("hello")
            # Transactions need a replica set member or a mongos (MongoDB 4.0 / 4.2+).
            has_tx = "setName" in hello or hello.get("msg") == "isdbgrid"
            self.features = features.replace(transactions=has_tx)  # type: ignore[misc]
            meta = self._meta.find_one({"_id": s.collection})
            if meta is None and self.read_only and self._coll.find_one({}, {"_id": 1}) is None:
                # Nothing to read and nothing may be created: as a missing file elsewhere.
                raise StorageNotFound(
                    f"no collection {s.collection!r} in database {self._db.name!r} "
                    "(read_only is set)",
                    path=f"collection {self._db.name}.{s.collection}",
                )
            if meta is None and not self.read_only:
                self._meta.update_one(
                    {"_id": s.collection},
                    {"$setOnInsert": {"format": FORMAT_VERSION}},
                    upsert=True,
                )
                meta = self._meta.find_one({"_id": s.collection})
            # Records written by other programs may carry ObjectId _ids, which
            # BSON sorts after every str: pk order then needs Python.
            self._object_ids = (
                self._coll.find_one({"_id": {"$type": "objectId"}}, {"_id": 1}) is not None
            )
        if meta is not None and meta.get("format") != FORMAT_VERSION:
            raise ConfigurationError(
                f"collection {s.collection!r} has pymodels format {meta.get('format')}; "
                f"this pymodels reads format {FORMAT_VERSION}"
            )

    def _write_concern(self) -> WriteConcern:
        """The client's write concern where one was given, else majority and journaled.

        An acknowledged write is then on a majority of the replica set's members and
        in their journals (on disk where the server syncs its journal at commit:
        ``mongod``; SecantusDB with ``--sync-on-commit``), so it survives the
        primary's crash and a failover, not only the client's (docs/mongodb.md).
        """
        given = self._client.write_concern
        return given if not given.is_server_default else WriteConcern(w="majority", j=True)

    @property
    def collection(self) -> Collection[Any]:
        """The pymongo collection holding the records (a fresh client after fork())."""
        if os.getpid() != self._pid:
            self._after_fork()
        return self._coll

    def _after_fork(self) -> None:
        # A MongoClient must not be used in a forked child: the child gets its own.
        self._pid = os.getpid()
        if not self._owned:
            raise PyModelsError("mongodb: a storage on a given client cannot be used after fork()")
        self._client = self._connect()
        self._db = self._client.get_database(
            self._db.name, codec_options=_CODEC, write_concern=self._write_concern()
        )
        self._coll = self._db.get_collection(self._coll.name)
        self._meta = self._db.get_collection(META_COLLECTION)
        self._tx = threading.local()

    @property
    def session(self) -> ClientSession | None:
        """This thread's transaction session, if one is open."""
        session: ClientSession | None = getattr(self._tx, "session", None)
        if session is not None:
            self._tx.used = True  # see _serialize
        return session

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Translate pymongo's errors into the library's."""
        try:
            yield
        except pymongo.errors.DuplicateKeyError as e:
            raise IntegrityError(f"mongodb: {_duplicate_message(e.details)}") from e
        except pymongo.errors.BulkWriteError as e:
            errors = e.details.get("writeErrors") or [{}]
            if errors[0].get("code") == 11000:
                raise IntegrityError(f"mongodb: {_duplicate_message(errors[0])}") from e
            raise PyModelsError(f"mongodb: {errors[0].get('errmsg', e)}") from e
        except (
            pymongo.errors.ServerSelectionTimeoutError,
            pymongo.errors.AutoReconnect,
            pymongo.errors.ConnectionFailure,
        ) as e:
            hosts = _hosts_of(self._client) or [self._given_host()]
            host, _, port = hosts[0].rpartition(":")
            raise ConnectionFailed(
                f"cannot reach MongoDB at {', '.join(hosts)}: {_unreachable_reason(e, hosts)}",
                host=host or None,
                port=int(port) if port.isdigit() else None,
            ) from e
        except pymongo.errors.PyMongoError as e:
            raise PyModelsError(f"mongodb: {e}") from e

    def _given_host(self) -> str:
        s = self.settings
        return f"{s.host or 'localhost'}:{s.port or 27017}"

    # ------------------------------------------------------------ pks

    def _new_pk(self) -> str:
        return str(ObjectId())

    @staticmethod
    def _id_filter(pk: str) -> Any:
        """The ``_id`` condition of ``pk``: a 24-hex pk also matches its ObjectId."""
        if len(pk) == 24 and _HEX24.fullmatch(pk):
            return {"$in": [pk, ObjectId(pk)]}
        return pk

    def _ids_filter(self, pks: Iterable[str]) -> dict[str, Any]:
        ids: list[Any] = []
        for pk in pks:
            ids.append(pk)
            if len(pk) == 24 and _HEX24.fullmatch(pk):
                ids.append(ObjectId(pk))
        return {"_id": {"$in": ids}}

    # ------------------------------------------------------------ required hooks

    def _load(self, pk: str) -> dict[str, Any] | None:
        with self._guard():
            doc = self.collection.find_one({"_id": self._id_filter(pk)}, session=self.session)
        return None if doc is None else self._decode(doc)[1]

    def _decode(self, doc: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if type(doc["_id"]) is ObjectId:
            self._object_ids = True
        return decode_record(doc)

    def _store(self, pk: str, record: dict[str, Any], *, overwrite: bool) -> bool:
        coll = self.collection
        session = self.session
        with self._guard():
            if len(pk) == 24 and _HEX24.fullmatch(pk):
                return self._store_hex(pk, record, overwrite)
            if overwrite:
                coll.replace_one(
                    {"_id": pk}, encode_record(pk, record), upsert=True, session=session
                )
                return True
            try:
                coll.insert_one(encode_record(pk, record), session=session)
            except pymongo.errors.DuplicateKeyError as e:
                if (e.details or {}).get("keyPattern", {"_id": 1}) == {"_id": 1}:
                    return False
                raise
            return True

    def _store_hex(self, pk: str, record: dict[str, Any], overwrite: bool) -> bool:
        # The record may be stored under ObjectId(pk) (written by another
        # program): it is that record, and it keeps its _id's type.
        coll = self.collection
        session = self.session
        found = list(coll.find({"_id": self._id_filter(pk)}, {"_id": 1}, session=session))
        if len(found) > 1:
            raise IntegrityError(
                f"mongodb: pk {pk!r} names two records (_id {pk!r} and ObjectId('{pk}')); "
                "remove one of them"
            )
        if found:
            if not overwrite:
                return False
            _id = found[0]["_id"]
            coll.replace_one({"_id": _id}, encode_record(_id, record), session=session)
            return True
        try:
            coll.insert_one(encode_record(pk, record), session=session)
        except pymongo.errors.DuplicateKeyError as e:
            if overwrite or (e.details or {}).get("keyPattern", {"_id": 1}) != {"_id": 1}:
                raise
            return False
        return True

    def _remove(self, pk: str) -> bool:
        with self._guard():
            result = self.collection.delete_one({"_id": self._id_filter(pk)}, session=self.session)
        return bool(result.deleted_count == 1)

    def _scan(self) -> Iterator[tuple[str, dict[str, Any]]]:
        return self._find({}, None, 0, None)

    def _clear(self) -> None:
        with self._guard():
            self.collection.delete_many({}, session=self.session)

    def _close(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None and self._owned and os.getpid() == self._pid:
            with contextlib.suppress(pymongo.errors.PyMongoError):
                client.close()

    # ------------------------------------------------------------ optional overrides

    def _load_many(self, pks: list[str]) -> list[dict[str, Any] | None]:
        with self._guard():
            docs = list(self.collection.find(self._ids_filter(pks), session=self.session))
        found = dict(self._decode(doc) for doc in docs)
        return [found.get(pk) for pk in pks]

    def _store_many(self, items: Iterable[tuple[str, dict[str, Any]]]) -> None:
        docs = [encode_record(pk, record) for pk, record in items]
        if docs:
            with self._guard():
                # Fresh pks: a clash is an IntegrityError, and the caller redoes
                # the batch one by one (never overwriting).
                self.collection.insert_many(docs, ordered=True, session=self.session)

    def _save_batch(self, start: int, batch: list[Any], written: list[str]) -> None:
        # With transactions the base class inserts the batch in one (_store_many).
        # Without (a standalone server), mappings still go as one ordered
        # insert_many: the records before a failing one stay written, as the
        # contract says for engines without transactions. Documents take the
        # base class's path (their indexes and saved state).
        if self.features.transactions or batch_has_documents(batch):
            super()._save_batch(start, batch, written)
            return
        records, invalid = batch_records(start, batch)
        failure: tuple[int, PyModelsError] | None = invalid
        pks = self._new_pks(len(records))
        done = 0
        while done < len(records):
            docs = [encode_record(pk, r) for pk, r in zip(pks[done:], records[done:], strict=True)]
            try:
                with self._guard():
                    self.collection.insert_many(docs, ordered=True)
                done = len(records)
            except IntegrityError as e:
                cause = e.__cause__
                details = cause.details if isinstance(cause, pymongo.errors.BulkWriteError) else {}
                first = (details.get("writeErrors") or [{}])[0]
                done += int(details.get("nInserted", 0))
                if first.get("keyPattern", {"_id": 1}) == {"_id": 1} and "index" in first:
                    # A generated pk that clashes (however unlikely) is replaced,
                    # never written over the record that has it.
                    pks[done] = self._new_pk()
                    continue
                failure = (start + done, e)  # before any invalid item: it fails first
                break
        written.extend(pks[:done])
        if failure is not None:
            index, error = failure
            raise BulkWriteError(
                f"save_many failed at item {index}: {error}", index=index, written_pks=written
            ) from error

    def _keys(self) -> Iterator[str]:
        for pk, _ in self._find({}, None, 0, None, projection={"_id": 1}):
            yield pk

    def _count(self) -> int:
        with self._guard():
            return int(self.collection.count_documents({}, session=self.session))

    def _contains(self, pk: str) -> bool:
        with self._guard():
            doc = self.collection.find_one(
                {"_id": self._id_filter(pk)}, {"_id": 1}, session=self.session
            )
        return doc is not None

    def _begin(self) -> None:
        if not self.features.transactions:
            raise NotSupported("mongodb: transactions need a replica set or a sharded cluster")
        _ = self.collection  # after fork(): this process's own client first
        with self._guard():
            session = self._client.start_session()
            session.start_transaction(write_concern=self._db.write_concern)
        self._tx.session = session
        self._tx.used = False

    def _commit(self) -> None:
        session = self._tx.session
        try:
            with self._guard():
                session.commit_transaction()
        finally:
            self._tx.session = None
            session.end_session()

    def _rollback(self) -> None:
        session = getattr(self._tx, "session", None)
        if session is None:
            return
        try:
            with self._guard(), contextlib.suppress(pymongo.errors.PyMongoError):
                session.abort_transaction()
        finally:
            self._tx.session = None
            session.end_session()

    def _has_index(self, spec: IndexSpec) -> bool:
        name = ("u_" if spec.unique else "i_") + spec.name
        with self._guard():
            info = self.collection.index_information()
        return name in info and bool(info[name].get("unique", False)) == spec.unique

    def _serialize(self, key: str) -> None:
        # MongoDB makes a conflicting transaction fail, never wait: both write
        # one lock document first, and the loser starts its transaction again
        # (nothing of it is lost while the lock is its first use) until the
        # winner has committed.
        state = self._tx
        session = getattr(state, "session", None)
        if session is None:
            return
        fresh = not getattr(state, "used", False)
        lock = {"_id": f"lock\x00{self._coll.name}\x00{key}"}
        deadline = time.monotonic() + max(self.settings.timeout, 1.0)
        delay = 0.001
        while True:
            try:
                with self._guard():
                    self._meta.update_one(lock, {"$inc": {"n": 1}}, upsert=True, session=session)
                return
            except PyModelsError as e:
                cause = e.__cause__
                conflict = isinstance(cause, pymongo.errors.OperationFailure) and (
                    cause.code in (WRITE_CONFLICT, 11000)
                    or cause.has_error_label("TransientTransactionError")
                )
                if not conflict:
                    raise
                if not fresh:
                    # The transaction wrote before: it cannot start again here.
                    raise LockTimeout(
                        f"mongodb: another transaction holds {key!r}; this one is rolled "
                        "back and may be retried"
                    ) from e
                if time.monotonic() > deadline:
                    raise LockTimeout(
                        f"mongodb: another transaction held {key!r} for {self.settings.timeout}s"
                    ) from e
            with self._guard(), contextlib.suppress(pymongo.errors.PyMongoError):
                session.abort_transaction()
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
            with self._guard():
                session.start_transaction(write_concern=self._db.write_concern)

    def _can_index_now(self) -> bool:
        # MongoDB creates indexes outside transactions only.
        return self.session is None

    def _create_index(self, spec: IndexSpec) -> None:
        keys = []
        for key in spec.keys:
            if not valid_path(key.path):
                raise ConfigurationError(f"cannot index {key.key!r}: not a field path")
            keys.append((dotted(key.path), -1 if key.descending else 1))
        options: dict[str, Any] = {"name": ("u_" if spec.unique else "i_") + spec.name}
        if spec.unique:
            options["unique"] = True
            # Absent values never clash (MongoDB would index them as null).
            options["partialFilterExpression"] = {name: {"$exists": True} for name, _ in keys}
        with self._guard():
            self.collection.create_index(keys, **options)

    def _indexes(self) -> list[IndexSpec]:
        with self._guard():
            found = self.collection.index_information()
        specs = []
        for name, info in sorted(found.items()):
            if not name.startswith(("i_", "u_")):
                continue  # _id_, or an index another program made
            keys = tuple(
                OrderKey(tuple(field.split(".")), direction == -1)
                for field, direction in info["key"]
            )
            specs.append(IndexSpec(keys, bool(info.get("unique", False)), None))
        return specs

    def _update_many(self, pks: list[str], changes: list[Change]) -> int:
        update = _update_document(changes)
        if update is None or not pks:
            return super()._update_many(pks, changes)
        document, guard = update
        ids = self._ids_filter(pks)
        with self._lock, self._atomic(), self._guard():
            coll, session = self.collection, self.session
            # Records the update document cannot change exactly (a parent that
            # is not a dict, an int that would overflow, a field that is not a
            # number) take the generic path, which raises the contract's errors.
            others = (
                [
                    self._decode(doc)[0]
                    for doc in coll.find({**ids, "$nor": [guard]}, {"_id": 1}, session=session)
                ]
                if guard
                else []
            )
            done = super()._update_many(others, changes) if others else 0
            result = coll.update_many({**ids, **guard}, document, session=session)
            return done + int(result.matched_count)

    def _compare_and_store(
        self, pk: str, record: dict[str, Any], field: str, expected: Any
    ) -> bool:
        if expected is None:
            return self._store(pk, record, overwrite=False)
        condition: dict[str, Any] | None
        if expected is MISSING:
            condition = compile_condition(Lookup((field,), "exists", False)).native
        else:
            condition = exact_equals((field,), expected)
            if condition is None:
                return super()._compare_and_store(pk, record, field, expected)
        with self._guard():
            found = self.collection.find_one(
                {"_id": self._id_filter(pk)}, {"_id": 1}, session=self.session
            )
            if found is None:
                return False
            _id = found["_id"]
            try:
                result = self.collection.replace_one(
                    {"$and": [{"_id": _id}, condition or {}]},
                    encode_record(_id, record),
                    session=self.session,
                )
            except pymongo.errors.OperationFailure as e:
                if e.code == WRITE_CONFLICT:
                    # Another writer changed the record meanwhile (SecantusDB
                    # reports this outside transactions too): the stored
                    # version is no longer the one expected.
                    return False
                raise
        return bool(result.matched_count == 1)

    # ------------------------------------------------------------ the engine's side of queries

    def _compile_condition(self, condition: Any) -> Compiled:
        return compile_condition(condition)

    def _select(self, native: Any, order: Any, offset: int, limit: int | None) -> Iterator[Item]:
        flt = native or {}
        if order is None:
            return self._find(flt, None, offset, limit)
        keys = [k for k in order if not k.is_pk and valid_path(k.path)]
        if self._object_ids:
            # ObjectId _ids sort after every str _id in BSON: Python sorts.
            return self._python_order(flt, order, offset, limit)
        if not keys:
            return self._find(flt, sort_spec(order), offset, limit)
        return self._checked_order(flt, order, keys, offset, limit)

    def _checked_order(
        self,
        flt: dict[str, Any],
        order: tuple[OrderKey, ...],
        keys: list[OrderKey],
        offset: int,
        limit: int | None,
    ) -> Iterator[Item]:
        """The engine's order where the records' kinds allow it, else Python's (see _query)."""
        if limit is not None and offset + limit <= SMALL_PAGE:
            if self.session is None and offset + limit > 0:  # $limit must be positive
                page = self._facet_page(flt, order, keys, offset + limit)
                if page is not None:
                    yield from page[offset:]
                    return
            # In a transaction (where a failed command aborts it) or when the
            # page is too large for one reply document: a small page reads up
            # to SMALL_PAGE matches: when that is all of them their kinds are
            # known without a probe (which would read every match on the
            # server anyway).
            rows = list(self._find(flt, sort_spec(order), 0, SMALL_PAGE))
            classes = classes_of(rows, keys)
            if len(rows) < SMALL_PAGE:
                if classes is None:
                    sort_items(rows, order)
                yield from rows[offset : offset + limit]
                return
            if (
                classes is None
                or any(c is None for c in classes)
                or self._mixed(flt, keys, classes)
            ):
                yield from self._python_order(flt, order, offset, limit)
                return
            yield from rows[offset : offset + limit]
            return
        batch_size = FIRST_BATCH if limit is None else min(limit, FIRST_BATCH)
        stream = self._find(flt, sort_spec(order), offset, limit)
        rows = list(itertools.islice(stream, batch_size))
        complete = offset == 0 and len(rows) < batch_size
        classes = classes_of(rows, keys)
        if complete:
            if classes is None:
                sort_items(rows, order)
            yield from rows
            return
        if classes is None or any(c is None for c in classes) or self._mixed(flt, keys, classes):
            stream.close()
            yield from self._python_order(flt, order, offset, limit)
            return
        yield from rows
        yield from stream

    def _facet_page(
        self,
        flt: dict[str, Any],
        order: tuple[OrderKey, ...],
        keys: list[OrderKey],
        count: int,
        *,
        loose: bool = True,
        by_pk: bool = False,
    ) -> list[Item] | None:
        """The first ``count`` matches in the contract's order, matches read once (_query).

        The server sorts by the order's own keys, without the pk that ends
        every order (a second sort key costs SecantusDB about a fifth of the
        query), and returns TIE_ROOM records more: the records tied with the
        page's last one on those keys are then all in hand and sorted by pk
        here. Where they are not (more ties than that), the page is read again
        sorted by the pk too, and so are the next pages of that order until one
        finds its ties fit (it reads TIE_ROOM records more too, to know).
        ``loose``: the filter goes without its list guards (_query.loosen),
        checked here on the records kept; a record failing one reads the page
        again with the exact filter.

        None when the server refuses the reply as too large (the page's
        records exceed the 16 MB a document may hold): the caller reads
        them as a cursor instead.
        """
        spec = sort_spec(order)
        sent, guards = loosen(flt) if loose else (flt, [])
        hint = tuple(spec)
        tied = len(spec) > 1 and spec[-1][0] == "_id"  # the pk breaks ties of the keys
        # The hints are advisory: a lost update costs time, never an answer.
        split = tied and not by_pk and hint not in self._tie_hints
        limit = count + TIE_ROOM if tied else count
        pipeline = page_pipeline(sent, spec[:-1] if split else spec, limit, keys)
        try:
            with self._guard():
                result = next(iter(self.collection.aggregate(pipeline)), None)
        except PyModelsError as e:
            cause = e.__cause__
            if isinstance(cause, pymongo.errors.OperationFailure) and cause.code in _TOO_LARGE:
                return None
            raise
        if result is None:  # not expected: $facet always returns one document
            return None
        docs: list[dict[str, Any]] = result["page"]
        if len(docs) < limit:
            # Every match is in hand: the contract's order on them, whatever their kinds.
            self._tie_hints.discard(hint)
            rows = [self._decode(doc) for doc in docs if holds_guards(doc, guards)]
            return sort_items(rows, order)[:count]
        rows = [self._decode(doc) for doc in docs[:count]]
        if tied:
            last = tie_key(rows[-1][1], keys)
            ties: list[Item] = []
            fit = False  # whether a record past the page's ties was read
            for doc in itertools.islice(docs, count, None):
                row = self._decode(doc)
                if tie_key(row[1], keys) != last:
                    fit = True
                    break
                ties.append(row)
            if split and not fit:
                # Every record read ties with the page's last: more may follow.
                if len(self._tie_hints) >= 64:
                    self._tie_hints.clear()
                self._tie_hints.add(hint)
                return self._facet_page(flt, order, keys, count, loose=loose, by_pk=True)
            if split:
                rows += ties
            elif fit:
                self._tie_hints.discard(hint)  # the ties fit: the next page sorts by the keys
        if guards and not all(holds_guards(doc, guards) for doc in docs[: len(rows)]):
            # A record the exact filter leaves out (a list at a queried field).
            return self._facet_page(flt, order, keys, count, loose=False, by_pk=by_pk)
        classes = classes_of(rows, keys)
        if classes is None or any(c is None for c in classes):
            return list(self._python_order(flt, order, 0, count))
        seen, on_way = kinds_seen(keys, result["kinds"])
        if mixed_types(keys, [str(c) for c in classes], seen, on_way):
            return list(self._python_order(flt, order, 0, count))
        # BSON orders every match as the contract does at the keys: the rows are a
        # prefix of the matches in that order holding every tie of the page's last.
        return sort_items(rows, order)[:count] if split else rows

    def _mixed(self, flt: dict[str, Any], keys: list[OrderKey], classes: list[str | None]) -> bool:
        """Whether a matching record may sort otherwise in BSON than in the contract (_query)."""
        probe = _danger_probe(flt, keys, classes)
        if probe is not None:
            with self._guard():
                found = self.collection.find_one(probe, {"_id": 1}, session=self.session)
            return found is not None
        # One flat probe per condition (a planner serves each from the query's
        # index; SecantusDB would scan an $or of them): another type at a key,
        # arrays included, or an array on the way to a dotted key.
        branches: list[dict[str, Any]] = []
        for key, kind in zip(keys, classes, strict=True):
            branches.append({dotted(key.path): {"$type": other_types(str(kind))}})
            branches.extend(
                {dotted(key.path[:i]): {"$type": "array"}} for i in range(1, len(key.path))
            )
        for branch in branches:
            probe = {**flt, **branch} if not branch.keys() & flt.keys() else {"$and": [flt, branch]}
            with self._guard():
                found = self.collection.find_one(probe, {"_id": 1}, session=self.session)
            if found is not None:
                return True
        return False

    def _python_order(
        self, flt: dict[str, Any], order: tuple[OrderKey, ...], offset: int, limit: int | None
    ) -> Iterator[Item]:
        """Sort in Python: the sort keys of every match, then the records of the slice."""
        fields = {k.path[0] for k in order if not k.is_pk and valid_path(k.path)}
        projection = dict.fromkeys(fields, 1) if fields else {"_id": 1}
        keyed = list(self._find(flt, None, 0, None, projection=projection))
        sort_items(keyed, order)
        chosen = [pk for pk, _ in keyed[offset : None if limit is None else offset + limit]]
        del keyed
        for start in range(0, len(chosen), FIRST_BATCH):
            batch = chosen[start : start + FIRST_BATCH]
            for pk, record in zip(batch, self._load_many(batch), strict=True):
                if record is not None:  # deleted meanwhile
                    yield pk, record

    def _count_where(self, native: Any) -> int:
        with self._guard():
            return int(self.collection.count_documents(native or {}, session=self.session))

    def _delete_where(self, native: Any) -> int | None:
        with self._guard():
            result = self.collection.delete_many(native or {}, session=self.session)
        return int(result.deleted_count)

    def _explain_select(self, native: Any, order: Any, offset: int, limit: int | None) -> str:
        flt = native or {}
        spec = sort_spec(order) if order else []
        small = limit is not None and 0 < offset + limit <= SMALL_PAGE and len(spec) > 1
        total = bool(spec) and spec[-1][0] == "_id"
        loose, guards = loosen(flt)
        if not (small or (offset == 0 and (limit is None or total))):
            loose, guards = flt, []
        with self._guard():
            cursor = self.collection.find(loose, session=self.session)
            if spec:
                cursor = cursor.sort(spec)
            if offset:
                cursor = cursor.skip(offset)
            if limit is not None:
                cursor = cursor.limit(limit)
            plan = cursor.explain()
        winning = plan.get("queryPlanner", {}).get("winningPlan", {})
        text = f"find {loose!r} sort {spec!r}"
        if offset or limit is not None:
            text += f" skip {offset} limit {limit}"
        text += f"\n  plan (explain): {stages(winning)}"
        if guards:
            names = ", ".join(dotted(g) for g in guards)
            text += f"\n  (not a list at {names}: checked on the records read)"
        if spec:
            text += "\n  (kinds at the sort keys checked per run; Python sorts where they mix)"
        return text

    # ------------------------------------------------------------ reading

    def _find(
        self,
        flt: dict[str, Any],
        sort: list[tuple[str, int]] | None,
        offset: int,
        limit: int | None,
        projection: dict[str, Any] | None = None,
        *,
        loose: bool = True,
    ) -> Generator[tuple[str, dict[str, Any]], None, None]:
        total = bool(sort) and sort is not None and sort[-1][0] == "_id"
        if loose and offset == 0 and projection is None and (limit is None or total):
            # The list guards are checked here (_query.loosen): a record failing one
            # is dropped, and a limited read in a total order takes the rest from
            # the exact filter.
            sent, guards = loosen(flt)
            if guards:
                return self._loose_stream(flt, sent, guards, sort, limit)
        with self._guard():
            cursor = self.collection.find(flt, projection, session=self.session)
            cursor = cursor.batch_size(STREAM_BATCH)
            if sort:
                cursor = cursor.sort(sort)
            if offset:
                cursor = cursor.skip(offset)
            if limit is not None:
                cursor = cursor.limit(limit)
        return self._stream(cursor)

    def _loose_stream(
        self,
        flt: dict[str, Any],
        loose: dict[str, Any],
        guards: list[tuple[str, ...]],
        sort: list[tuple[str, int]] | None,
        limit: int | None,
    ) -> Generator[tuple[str, dict[str, Any]], None, None]:
        with self._guard():
            cursor = self.collection.find(loose, session=self.session).batch_size(STREAM_BATCH)
            if sort:
                cursor = cursor.sort(sort)
            if limit is not None:
                cursor = cursor.limit(limit)
        done = 0
        try:
            while True:
                with self._guard():
                    doc = next(cursor, None)
                if doc is None:
                    return
                if holds_guards(doc, guards):
                    done += 1
                    yield self._decode(doc)
                elif limit is not None:
                    # The records before this one are the exact filter's first ones.
                    cursor.close()
                    yield from self._find(flt, sort, done, limit - done, loose=False)
                    return
        finally:
            cursor.close()

    def _stream(self, cursor: Any) -> Generator[tuple[str, dict[str, Any]], None, None]:
        try:
            while True:
                with self._guard():
                    doc = next(cursor, None)
                if doc is None:
                    return
                yield self._decode(doc)
        finally:
            cursor.close()


def _danger_probe(
    flt: dict[str, Any], keys: list[OrderKey], classes: list[str | None]
) -> dict[str, Any] | None:
    """The one flat filter finding a match with a danger type at the one sort key, or None.

    None when the order has several keys or a dotted one, or the query's own
    condition on the key cannot take a ``$type`` beside it.
    """
    if len(keys) != 1 or len(keys[0].path) != 1 or classes[0] is None:
        return None
    name = keys[0].path[0]
    danger = {"$type": DANGER[classes[0]]}
    if name not in flt:
        return {**flt, name: danger}
    cond = flt[name]
    if type(cond) is not dict:
        return {**flt, name: {"$eq": cond, **danger}}
    if all(k.startswith("$") for k in cond) and "$type" not in cond:
        return {**flt, name: {**cond, **danger}}
    return None


def _unreachable_reason(error: Exception, hosts: list[str]) -> str:
    """pymongo's account of a server it could not reach, without what buries it.

    A server selection timeout appends the whole topology description (a few hundred
    characters of object reprs) and each server's configured socket timeouts; the
    reason is the part before them. Texts of any other shape are kept whole.
    """
    text = str(error)
    reason, timed_out, rest = text.partition(", Timeout: ")
    reason = re.sub(r" \(configured timeouts: [^)]*\)", "", reason)
    if len(hosts) == 1 and reason.startswith(f"{hosts[0]}: "):
        reason = reason[len(hosts[0]) + 2 :]
    if timed_out:
        waited = rest.partition(",")[0]
        reason = f"{reason} (no server answered within {waited})"
    return reason


def _duplicate_message(details: Mapping[str, Any] | None) -> str:
    details = details or {}
    message = str(details.get("errmsg", "duplicate key"))
    values = details.get("keyValue")
    if isinstance(values, Mapping) and values and "_id" not in values:
        # A unique index of pymodels' making: in the SQL backends' words, with the values.
        fields = ", ".join(str(name).replace(".", "__") for name in values)
        return (
            f"unique index on {fields}: another record holds the same value already "
            f"({dict(values)!r})"
        )
    match = re.search(r"index: (\S+)", message)
    index = match.group(1) if match else details.get("keyPattern")
    return f"duplicate key in unique index {index} ({details.get('keyValue', message)})"


#: Doubles whose sum with an increment of at most this size stays finite.
FLOAT_SAFE = 2.0**1022


def _update_document(changes: list[Change]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(update document, guard)`` for changes MongoDB applies exactly where the guard holds.

    None when no update document can (a path that is another's prefix).
    """
    paths = sorted(c.path for c in changes)
    if any(b[: len(a)] == a for a, b in itertools.pairwise(paths)):
        return None
    document: dict[str, dict[str, Any]] = {}
    guards: list[dict[str, Any]] = []
    for change in changes:
        name = dotted(change.path)
        for i in range(1, len(change.path)):
            parent = dotted(change.path[:i])
            # Each parent absent or a plain dict (not a list, scalar, null or tagged value).
            guards.append(
                {
                    "$or": [
                        {parent: {"$exists": False}},
                        {
                            parent: {"$type": "object", "$not": NOT_ARRAY},
                            f"{parent}.{TAG}": {"$exists": False},
                        },
                    ]
                }
            )
        if change.op == "unset":
            document.setdefault("$unset", {})[name] = ""
        elif change.op == "set":
            document.setdefault("$set", {})[name] = encode_value(change.value)
        else:
            amount = change.value
            bounds: dict[str, Any] = {"$type": NUMBER_TYPES, "$not": NOT_ARRAY}
            if type(amount) is int and amount > 0:
                bounds["$lte"] = INT_MAX - amount
            elif type(amount) is int and amount < 0:
                bounds["$gte"] = INT_MIN - amount
            elif type(amount) is float:
                # MongoDB adds doubles into an infinity, which is outside the value
                # domain. Both terms within 2**1022 sum within the largest double,
                # with no rounding to reason about; the rest takes the generic path.
                if abs(amount) > FLOAT_SAFE:
                    return None
                bounds |= {"$gte": -FLOAT_SAFE, "$lte": FLOAT_SAFE}
            guards.append({"$or": [{name: {"$exists": False}}, {name: bounds}]})
            document.setdefault("$inc", {})[name] = amount
    guard: dict[str, Any] = {"$and": guards} if guards else {}
    return document, guard
