"""Per-customer data keys for crypto-shredding (DOMAIN.md, "Customer": erasure on request).

Every data subject (a customer) has its own random 256-bit key. The personal fields of its
events are sealed with that key (AES-GCM) before they are stored, and so are the personal texts
the read models keep; erasing the customer destroys the key, which makes all of them unreadable
at once, wherever they were copied, while the events themselves (and so the history) stay.

Keys live in one table beside the events: a `ReadModelStore` (the same SQLite directory or
PostgreSQL database as the events; in memory for the memory choice). A destroyed key leaves a
tombstone row, so a subject once erased can never be given a new key by accident (sealing for it
fails with `KeyDestroyed`). The vault keeps no other copy of a key: what is destroyed is gone.
Limits worth knowing: the database may keep the bytes of a destroyed key in free space until
they are overwritten (SQLite runs with `secure_delete` on for this table; PostgreSQL until
VACUUM reuses the page), so a deployment needing more than that uses a KMS-backed vault.

Registrations under load create many keys at once. A new subject's key is made in memory
(`new_key`) and stored by whoever stores the events next (`store_pending`, called by the
application right before it saves): one small transaction for every key made since, committed
before the events sealed with them. Keys asked for elsewhere (`create_key`, `data_key`) are
coalesced into one transaction by a writer thread. Keys read are cached for `cache_ttl_s`
seconds; another service instance sharing the database stops using a key it cached at most that
long after this one destroyed it (this instance stops at once).

Keys handed to another subject (owners). A key made for something whose data subject is not
known yet (an interaction before the caller is identified) can be handed to the subject once it
is (`assign_owner`), and a merged customer's key to the survivor; `destroy_owned` then destroys
the owner's key together with every key handed to it, directly or through keys handed to those.
A key handed to an owner whose key was destroyed already is destroyed at once. Ownership
changes and such destructions are serialised (PostgreSQL: a transaction-scoped advisory lock;
SQLite: its write lock), so a key handed over while its owner is being erased is never missed.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from uuid import UUID

from crmcore.adapters.readmodels import (
    Cursor,
    ReadModelStore,
    SqliteReadModelStore,
    open_read_model_store,
)
from crmcore.config import PersistenceSettings

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
DEFAULT_CACHE_TTL_S = 30.0
DEFAULT_CACHE_SIZE = 100_000
_MAX_BATCH = 1_000
#: What `_lookup` returns for a tombstone (a destroyed key).
_DESTROYED = object()
#: PostgreSQL advisory lock serialising ownership changes with `destroy_owned`.
_OWNERS_LOCK = 0x6B65795F6F776E  # "key_own"
#: Owners looked up per statement while following ownership.
_OWNERS_CHUNK = 500


class KeyDestroyed(Exception):
    """The subject's key was destroyed (the customer was erased): nothing can be sealed for it."""

    def __init__(self, subject: UUID) -> None:
        super().__init__(f"the data key of {subject} was destroyed (erased)")
        self.subject = subject


class UnreadableSeal(ValueError):
    """Sealed bytes that fail authentication: corrupted, or moved from another record."""


# --- AES-GCM --------------------------------------------------------------------------------
# `cryptography` when installed (fast); otherwise pycryptodome, which the eventsourcing cipher
# extra brings. Both implement the same standard AES-GCM: the sealed bytes are interchangeable.

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    def _encrypt(key: bytes, nonce: bytes, plaintext: bytes, associated: bytes) -> bytes:
        return AESGCM(key).encrypt(nonce, plaintext, associated)

    def _decrypt(key: bytes, nonce: bytes, ciphertext: bytes, associated: bytes) -> bytes:
        try:
            return AESGCM(key).decrypt(nonce, ciphertext, associated)
        except InvalidTag:
            raise UnreadableSeal("sealed data failed authentication") from None

except ImportError:  # pragma: no cover - depends on the installation
    from Crypto.Cipher import AES

    def _encrypt(key: bytes, nonce: bytes, plaintext: bytes, associated: bytes) -> bytes:
        cipher = AES.new(key, AES.MODE_GCM, nonce=nonce)
        cipher.update(associated)
        ciphertext, tag = cipher.encrypt_and_digest(plaintext)
        return ciphertext + tag

    def _decrypt(key: bytes, nonce: bytes, ciphertext: bytes, associated: bytes) -> bytes:
        cipher = AES.new(key, AES.MODE_GCM, nonce=nonce)
        cipher.update(associated)
        try:
            return cipher.decrypt_and_verify(ciphertext[:-TAG_BYTES], ciphertext[-TAG_BYTES:])
        except ValueError:
            raise UnreadableSeal("sealed data failed authentication") from None


def seal_with(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """`plaintext` encrypted and authenticated with `key`: nonce + ciphertext + tag.

    `associated` (not stored) binds the seal to its record: opening it elsewhere fails."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + _encrypt(key, nonce, plaintext, associated)


def open_with(key: bytes, sealed: bytes, associated: bytes) -> bytes:
    if len(sealed) < NONCE_BYTES + TAG_BYTES:
        raise UnreadableSeal("sealed data is too short")
    return _decrypt(key, bytes(sealed[:NONCE_BYTES]), bytes(sealed[NONCE_BYTES:]), associated)


# --- where keys are kept -------------------------------------------------------------------


class DurableSqliteStore(SqliteReadModelStore):
    """A SQLite store whose every commit reaches the disk. Read models may lose their last
    commits in a power cut (they are rebuilt); keys may not (what they sealed is kept)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        with self._lock:
            self._connection.execute("PRAGMA synchronous = FULL")
            self._connection.execute("PRAGMA secure_delete = ON")


def open_key_store(persistence: PersistenceSettings, name: str) -> ReadModelStore:
    """The store of a key vault called `name` on the engine the settings choose."""
    if persistence.kind == "sqlite":
        persistence.data_dir.mkdir(parents=True, exist_ok=True)
        return DurableSqliteStore(str(persistence.data_dir / f"{name}.sqlite"))
    return open_read_model_store(persistence, name)


# --- the vault ------------------------------------------------------------------------------


class _Creation:
    __slots__ = ("done", "key", "subject")

    def __init__(self, subject: UUID, key: bytes) -> None:
        self.subject = subject
        self.key = key
        self.done: Future[bytes] = Future()


class KeyVault:
    """The data keys of every subject, in a table of `store` (see the module docstring)."""

    def __init__(
        self,
        store: ReadModelStore,
        *,
        cache_ttl_s: float = DEFAULT_CACHE_TTL_S,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self.store = store
        self._cache_ttl_s = cache_ttl_s
        self._cache_size = cache_size
        self._cache: OrderedDict[UUID, tuple[bytes, float]] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._creations: queue.SimpleQueue[_Creation | None] = queue.SimpleQueue()
        self._pending: dict[UUID, bytes] = {}
        self._pending_lock = threading.Lock()
        # Destroyed here: never cached again, even by a read that raced the destruction.
        self._destroyed: set[UUID] = set()
        self._reads: dict[UUID, Future[bytes | object | None]] = {}
        self._reads_lock = threading.Lock()
        self._readers: ThreadPoolExecutor | None = None
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        self._closed = False
        bytes_type = "BYTEA" if store.dialect == "postgres" else "BLOB"
        store.create(
            "CREATE TABLE IF NOT EXISTS data_keys ("
            " subject TEXT PRIMARY KEY,"
            f" data_key {bytes_type}"  # NULL once destroyed: the tombstone
            ")"
        )
        store.create(
            "CREATE TABLE IF NOT EXISTS key_owners ("
            " subject TEXT PRIMARY KEY,"
            " owner TEXT NOT NULL"
            ")",
            "CREATE INDEX IF NOT EXISTS key_owners_owner ON key_owners (owner)",
        )
        if store.dialect == "sqlite":
            with store.transaction() as cursor:
                # Zero what is deleted or overwritten: a destroyed key leaves no bytes behind.
                cursor.execute("PRAGMA secure_delete = ON")

    # --- keys ---

    def new_key(self, subject: UUID) -> bytes:
        """A fresh key for a subject that is new (a fresh UUID), kept in memory until
        `store_pending` stores it: call that before storing anything sealed with it."""
        key = os.urandom(KEY_BYTES)
        with self._pending_lock:
            self._pending[subject] = key
        return key

    def store_pending(self) -> None:
        """Stores every key made by `new_key` and not stored yet, in one transaction."""
        with self._pending_lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        try:
            # A durable commit (not `synchronous_commit = off`, although the events' commit
            # would flush it too): once this returns the keys count as stored, and the events
            # sealed with them may be stored later, after the database crashed and came back
            # (the event store retries on a lost connection). A key lost in that crash would
            # leave those events sealed with a key nobody has: unreadable for good.
            with self.store.transaction() as cursor:
                stored = self._insert(cursor, [_Creation(s, k) for s, k in pending.items()])
        except BaseException:
            with self._pending_lock:
                self._pending = {**pending, **self._pending}
            raise
        for subject, key in pending.items():
            if stored.get(str(subject)) != key:
                raise RuntimeError(f"subject {subject} already had a key: not a new subject")
            self._remember(subject, key)

    def create_key(self, subject: UUID) -> bytes:
        """A fresh key for a new subject, stored (durably) before it is returned. Concurrent
        callers share one transaction. The subject's existing key if it already had one."""
        cached = self._cached(subject)
        if cached is not None:
            return cached
        return self._create([subject])[0]

    def data_key(self, subject: UUID) -> bytes:
        """The subject's key, created if it has none; KeyDestroyed once it was destroyed."""
        existing = self._lookup(subject)
        if isinstance(existing, bytes):
            return existing
        if existing is _DESTROYED:
            raise KeyDestroyed(subject)
        return self.create_key(subject)

    def existing_key(self, subject: UUID) -> bytes | None:
        """The subject's key, or None when it never had one or it was destroyed."""
        existing = self._lookup(subject)
        return existing if isinstance(existing, bytes) else None

    def is_destroyed(self, subject: UUID) -> bool:
        return self._lookup(subject) is _DESTROYED

    def destroy(self, subjects: Iterable[UUID]) -> None:
        """Destroys the keys of `subjects` for good (leaving tombstones)."""
        targets = sorted(set(subjects), key=str)
        if not targets:
            return
        with self._cache_lock:
            self._destroyed.update(targets)
            for subject in targets:
                self._cache.pop(subject, None)
        with self.store.transaction() as cursor:
            cursor.executemany(
                "INSERT INTO data_keys (subject, data_key) VALUES (?, NULL) "
                "ON CONFLICT (subject) DO UPDATE SET data_key = NULL",
                [(str(subject),) for subject in targets],
            )

    # --- owners ---

    def assign_owner(self, subject: UUID, owner: UUID) -> bool:
        """Hands the key of `subject` to `owner` (replacing an earlier owner), so that
        `destroy_owned(owner)` destroys it too. When the owner's key was destroyed already,
        the subject's key (and what was handed to it) is destroyed at once: returns True then."""
        if subject == owner:
            return False
        with self.store.transaction() as cursor:
            self._serialise_owners(cursor)
            cursor.execute(
                "INSERT INTO key_owners (subject, owner) VALUES (?, ?) "
                "ON CONFLICT (subject) DO UPDATE SET owner = excluded.owner",
                (str(subject), str(owner)),
            )
            cursor.execute("SELECT data_key FROM data_keys WHERE subject = ?", (str(owner),))
            row = cursor.fetchone()
            if row is None or row[0] is not None:
                return False
            self._destroy_in(cursor, self._owned_closure(cursor, subject))
            return True

    def owner_of(self, subject: UUID) -> UUID | None:
        """Whom the subject's key was handed to (None: nobody)."""
        rows = self.store.query("SELECT owner FROM key_owners WHERE subject = ?", (str(subject),))
        return UUID(str(rows[0][0])) if rows else None

    def destroy_owned(self, owner: UUID) -> list[UUID]:
        """Destroys the key of `owner` and every key handed to it, directly or through keys
        handed to those (leaving tombstones); returns the subjects whose keys it destroyed
        (the owner first, then the others in order). Safe to repeat."""
        with self.store.transaction() as cursor:
            self._serialise_owners(cursor)
            targets = self._owned_closure(cursor, owner)
            self._destroy_in(cursor, targets)
        return targets

    def _serialise_owners(self, cursor: Cursor) -> None:
        if self.store.dialect == "postgres":
            cursor.execute("SELECT pg_advisory_xact_lock(?)", (_OWNERS_LOCK,))

    @staticmethod
    def _owned_closure(cursor: Cursor, owner: UUID) -> list[UUID]:
        """`owner` and every subject handed to it, transitively (cycles are harmless)."""
        found: dict[UUID, None] = {owner: None}
        frontier = [owner]
        while frontier:
            handed: list[UUID] = []
            for start in range(0, len(frontier), _OWNERS_CHUNK):
                chunk = frontier[start : start + _OWNERS_CHUNK]
                placeholders = ", ".join("?" for _ in chunk)
                cursor.execute(
                    f"SELECT subject FROM key_owners WHERE owner IN ({placeholders}) "
                    "ORDER BY subject",
                    [str(each) for each in chunk],
                )
                handed += [UUID(str(row[0])) for row in cursor.fetchall()]
            frontier = [subject for subject in handed if subject not in found]
            found.update(dict.fromkeys(frontier))
        return list(found)

    def _destroy_in(self, cursor: Cursor, subjects: list[UUID]) -> None:
        """`destroy` inside the caller's transaction."""
        with self._cache_lock:
            self._destroyed.update(subjects)
            for subject in subjects:
                self._cache.pop(subject, None)
        with self._pending_lock:
            for subject in subjects:
                self._pending.pop(subject, None)
        cursor.executemany(
            "INSERT INTO data_keys (subject, data_key) VALUES (?, NULL) "
            "ON CONFLICT (subject) DO UPDATE SET data_key = NULL",
            [(str(subject),) for subject in subjects],
        )

    # --- sealing ---

    def seal(self, subject: UUID, plaintext: bytes, associated: bytes) -> bytes:
        """`plaintext` sealed with the subject's key (created if needed; KeyDestroyed if gone)."""
        return seal_with(self.data_key(subject), plaintext, associated)

    def open(self, subject: UUID, sealed: bytes, associated: bytes) -> bytes | None:
        """The plaintext, or None when the subject's key is gone (UnreadableSeal if tampered)."""
        key = self.existing_key(subject)
        return None if key is None else open_with(key, sealed, associated)

    def prefetch(self, subject: UUID) -> None:
        """Starts reading the subject's key in the background, so that the read overlaps
        with other work (reading the subject's events); a later lookup waits for it."""
        if self._cached(subject) is not None:
            return
        with self._reads_lock:
            if subject in self._reads or self._closed:
                return
            if self._readers is None:
                self._readers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="key-read")
            read = self._readers.submit(self._read_stored, subject)
            self._reads[subject] = read
        read.add_done_callback(lambda _: self._forget_read(subject))

    def close_vault(self) -> None:
        """Stops the key writer and readers (the store belongs to the caller)."""
        with self._reads_lock:
            readers, self._readers = self._readers, None
        if readers is not None:
            readers.shutdown(wait=True)
        with self._writer_lock:
            self._closed = True
            writer, self._writer = self._writer, None
        if writer is not None:
            self._creations.put(None)
            writer.join()

    # --- internals ---

    def _cached(self, subject: UUID) -> bytes | None:
        with self._cache_lock:
            entry = self._cache.get(subject)
            if entry is None:
                return None
            key, expires = entry
            if expires < time.monotonic():
                del self._cache[subject]
                return None
            self._cache.move_to_end(subject)
            return key

    def _remember(self, subject: UUID, key: bytes) -> None:
        with self._cache_lock:
            if subject in self._destroyed:
                return
            self._cache[subject] = (key, time.monotonic() + self._cache_ttl_s)
            self._cache.move_to_end(subject)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def _lookup(self, subject: UUID) -> bytes | object | None:
        """The key, `_DESTROYED`, or None (no row). Only keys are cached, never absences."""
        cached = self._cached(subject)
        if cached is not None:
            return cached
        with self._pending_lock:
            pending = self._pending.get(subject)
        if pending is not None:
            return pending
        with self._reads_lock:
            read = self._reads.get(subject)
        found = read.result() if read is not None else self._read_stored(subject)
        with self._cache_lock:
            # A read that started before this process destroyed the key may still find it.
            return _DESTROYED if subject in self._destroyed else found

    def _forget_read(self, subject: UUID) -> None:
        with self._reads_lock:
            self._reads.pop(subject, None)

    def _read_stored(self, subject: UUID) -> bytes | object | None:
        rows = self.store.query("SELECT data_key FROM data_keys WHERE subject = ?", (str(subject),))
        if not rows:
            return None
        stored = rows[0][0]
        if stored is None:
            return _DESTROYED
        key = bytes(stored)
        self._remember(subject, key)
        return key

    def _create(self, subjects: Sequence[UUID]) -> list[bytes]:
        creations = [_Creation(subject, os.urandom(KEY_BYTES)) for subject in subjects]
        self._ensure_writer()
        for creation in creations:
            self._creations.put(creation)
        return [creation.done.result() for creation in creations]

    def _ensure_writer(self) -> None:
        with self._writer_lock:
            if self._closed:
                raise RuntimeError("the key vault is closed")
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_keys, name="key-vault-writer", daemon=True
                )
                self._writer.start()

    def _write_keys(self) -> None:
        while True:
            first = self._creations.get()
            if first is None:
                return
            batch = [first]
            stop_after = False
            while len(batch) < _MAX_BATCH:
                try:
                    more = self._creations.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop_after = True
                    break
                batch.append(more)
            try:
                with self.store.transaction() as cursor:
                    stored = self._insert(cursor, batch)
            except Exception as error:
                for creation in batch:
                    creation.done.set_exception(error)
            else:
                for creation in batch:
                    key = stored.get(str(creation.subject))
                    if key is None:
                        creation.done.set_exception(KeyDestroyed(creation.subject))
                    else:
                        self._remember(creation.subject, key)
                        creation.done.set_result(key)
            if stop_after:
                return

    @staticmethod
    def _insert(cursor: Cursor, batch: list[_Creation]) -> dict[str, bytes | None]:
        """Inserts the new keys; returns what each subject holds now (an earlier key wins).

        One statement for the whole batch (one round trip): the writer doing this holds up
        every command waiting for its batch."""
        new = {str(creation.subject): creation.key for creation in batch}
        rows = ", ".join("(?, ?)" for _ in new)
        cursor.execute(
            f"INSERT INTO data_keys (subject, data_key) VALUES {rows} "
            "ON CONFLICT (subject) DO NOTHING RETURNING subject",
            [value for pair in new.items() for value in pair],
        )
        stored: dict[str, bytes | None] = {
            str(row[0]): new[str(row[0])] for row in cursor.fetchall()
        }
        clashes = sorted(set(new) - set(stored))
        if clashes:
            placeholders = ", ".join("?" for _ in clashes)
            cursor.execute(
                f"SELECT subject, data_key FROM data_keys WHERE subject IN ({placeholders})",
                clashes,
            )
            for subject, key in cursor.fetchall():
                stored[str(subject)] = None if key is None else bytes(key)
        return stored
