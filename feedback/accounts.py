"""Annotators, their roles and passwords, and login: the accounts part of `FeedbackService`."""

from __future__ import annotations

import hashlib
import hmac
import os

from sqlalchemy.orm import Session, sessionmaker

from db import queries as q
from db.models import Annotator
from db.session import retry_on_conflict
from feedback.types import AnnotatorInfo

ROLES = ("annotator", "admin")


class AccountsMixin:
    """Annotators, created on first use; admins and passwords for the page's login."""

    Session: sessionmaker[Session]

    def annotator(self, name: str, role: str | None = None) -> AnnotatorInfo:
        """The annotator called `name`, created on first use (role: annotator unless given)."""
        name = name.strip()
        if not name:
            raise ValueError("an annotator needs a name")
        if role is not None and role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")

        def get_or_create(s: Session) -> AnnotatorInfo:
            a = q.annotator_by_name(name, session=s)
            if a is None:
                a = Annotator(name=name, role=role or "annotator")
                s.add(a)
                s.flush()
            elif role is not None and a.role != role:
                a.role = role
            return _annotator(a)

        # another thread may create the same name between our read and insert: the second try reads theirs
        return retry_on_conflict(self.Session, get_or_create, attempts=2)

    def set_password(self, name: str, password: str, role: str | None = None) -> AnnotatorInfo:
        if len(password) < 4:
            raise ValueError(f"the password of {name!r} is too short: a password needs at least 4 characters")
        info = self.annotator(name, role)
        with self.Session.begin() as s:
            s.get(Annotator, info.id).password_hash = _hash_password(password)
        return info

    def check_login(self, name: str, password: str) -> AnnotatorInfo | None:
        with self.Session.begin() as s:
            a = q.annotator_by_name(name.strip(), session=s)
            if a is None or not a.password_hash or not _check_password(password, a.password_hash):
                return None
            return _annotator(a)

    def has_accounts(self) -> bool:
        with self.Session.begin() as s:
            return q.count_accounts(session=s) > 0


def _annotator(a: Annotator) -> AnnotatorInfo:
    return AnnotatorInfo(a.id, a.name, a.role)


# ---- passwords (pbkdf2, stdlib) ----------------------------------------------------------------------------------
_PBKDF2_ROUNDS = 200_000


def _hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, _PBKDF2_ROUNDS)
    return f"pbkdf2_sha256${_PBKDF2_ROUNDS}${salt.hex()}${digest.hex()}"


def _check_password(password: str, stored: str) -> bool:
    try:
        _, rounds, salt, digest = stored.split("$")
    except ValueError:
        return False
    got = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt), int(rounds))
    return hmac.compare_digest(got.hex(), digest)
