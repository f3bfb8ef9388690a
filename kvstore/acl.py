"""Access rules per client certificate: who may read or write which key prefixes (``kv serve --acl``).

Theory of operation
-------------------
The rules are a TOML file (read with the standard library's ``tomllib``) keyed by the common name of a
client certificate (``kvstore.tls.Principal.name``)::

    [clients.admin]
    readwrite = [""]        # every key, and membership and snapshot commands

    [clients.reader]
    read = ["app/"]         # get and list under app/, nothing else

A grant is a key prefix; ``readwrite`` includes ``read``. A name not listed gets nothing (not even
``status``); without an ACL file every certificate of the cluster's CA has full access.

What each request needs (``Acl.refusal``, called by ``kvstore.clients.ClientLinks._route`` before anything
is queued):

* put, cas, delete of one key: ``readwrite`` on a prefix of the key; get: ``read`` on a prefix of it;
* a range read (list by prefix, any limit) and a prefix delete are checked over their *whole* range: a
  grant must be a prefix of the requested prefix, so that every key the request may touch is covered
  (``read = ["app/"]`` allows a list of ``app/x/`` but not of ``app`` nor of ``""``);
* membership and leadership (``AdminRequest``, every op) and backups (``BackupRequest``): ``readwrite``
  on ``""``: they see or change the whole store;
* ``status``: any name with a rule, and every node certificate (members ask each other's status when
  they found or join the cluster).

Rules: no I/O but ``load``; a denial is an answer (``permission_denied``), never an exception.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import wire

if TYPE_CHECKING:
    from .tls import Principal

__all__ = ["Acl", "AclError", "Rules", "load", "parse"]


class AclError(ValueError):
    """The ACL file cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Rules:
    """One client's grants: key prefixes it may read, and prefixes it may read and write."""

    read: tuple[str, ...] = ()
    readwrite: tuple[str, ...] = ()

    def may_write(self, key: str) -> bool:
        return any(key.startswith(p) for p in self.readwrite)

    def may_read(self, key: str) -> bool:
        return any(key.startswith(p) for p in self.readwrite) or any(key.startswith(p) for p in self.read)

    # A range of every key starting with ``prefix`` is covered by a grant only if the grant is a prefix
    # of ``prefix``: the range holds ``prefix`` itself and keys going on with any character, which no
    # finite set of longer grants can cover. So the checks are the same as for a key.
    may_write_range = may_write
    may_read_range = may_read


@dataclass(frozen=True)
class Acl:
    """The access rules of a node (see the module docstring)."""

    clients: dict[str, Rules] = field(default_factory=dict)
    source: str = ""

    def refusal(self, principal: Principal | None, request: object) -> str | None:
        """Why the client ``principal`` (a ``kvstore.tls.Principal``, None for a connection without a
        certificate) may not make ``request``, or None if it may."""
        name = principal.name if principal is not None else None
        rules = self.clients.get(name) if name is not None else None
        who = f"client {name!r}" if name is not None else "a client without a certificate"
        match request:
            case wire.StatusRequest():
                if rules is not None or (principal is not None and principal.node_id is not None):
                    return None
                return f"permission denied: {who} has no access rule"
            case wire.PutRequest() | wire.CasRequest():
                if rules is not None and rules.may_write(request.key):
                    return None
                return f"permission denied: {who} may not write {request.key!r}"
            case wire.DeleteRequest():
                if request.prefix:
                    if rules is not None and rules.may_write_range(request.key):
                        return None
                    return f"permission denied: {who} may not delete every key starting with {request.key!r}"
                if rules is not None and rules.may_write(request.key):
                    return None
                return f"permission denied: {who} may not write {request.key!r}"
            case wire.GetRequest():
                if rules is not None and rules.may_read(request.key):
                    return None
                return f"permission denied: {who} may not read {request.key!r}"
            case wire.ListRequest():
                if rules is not None and rules.may_read_range(request.prefix):
                    return None
                return f"permission denied: {who} may not read every key starting with {request.prefix!r}"
            case wire.WatchRequest():
                if request.prefix:
                    if rules is not None and rules.may_read_range(request.key):
                        return None
                    return f"permission denied: {who} may not watch every key starting with {request.key!r}"
                if rules is not None and rules.may_read(request.key):
                    return None
                return f"permission denied: {who} may not watch {request.key!r}"
            case wire.UnwatchRequest():
                return None  # (its own connection's watch, which the ACL allowed)
            case wire.AdminRequest() | wire.BackupRequest():
                if rules is not None and rules.may_write_range(""):
                    return None
                what = "membership and leadership commands" if isinstance(request, wire.AdminRequest) else "backups"
                return f'permission denied: {who} may not run {what} (they need readwrite on "")'
            case _:
                return None  # not a client request: kvstore.clients answers it as such


def parse(text: str, source: str = "the ACL") -> Acl:
    """The ``Acl`` in TOML ``text``; raises ``AclError`` naming ``source`` on anything unexpected (an
    unknown key is a typo that would silently deny or allow, so it is refused)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AclError(f"{source} is not valid TOML: {exc}") from None
    unknown = set(data) - {"clients"}
    if unknown:
        raise AclError(f"{source}: unknown top-level key(s) {', '.join(sorted(unknown))}; "
                       f"expected [clients.NAME] tables")
    clients = data.get("clients", {})
    if not isinstance(clients, dict):
        raise AclError(f"{source}: 'clients' must be a table of [clients.NAME] tables")
    out: dict[str, Rules] = {}
    for name, table in clients.items():
        if not isinstance(table, dict):
            raise AclError(f"{source}: clients.{name} must be a table with read and/or readwrite lists")
        unknown = set(table) - {"read", "readwrite"}
        if unknown:
            raise AclError(f"{source}: clients.{name}: unknown key(s) {', '.join(sorted(unknown))}; "
                           "expected read and/or readwrite")
        grants = {}
        for kind in ("read", "readwrite"):
            prefixes = table.get(kind, [])
            if not isinstance(prefixes, list) or not all(isinstance(p, str) for p in prefixes):
                raise AclError(f"{source}: clients.{name}.{kind} must be a list of key prefixes (strings)")
            grants[kind] = tuple(prefixes)
        out[name] = Rules(**grants)
    return Acl(out, source)


def load(path: str | os.PathLike[str]) -> Acl:
    """The ``Acl`` in the file at ``path``; raises ``AclError`` if it cannot be read or is malformed."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise AclError(f"cannot read the ACL file {path}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise AclError(f"the ACL file {path} is not UTF-8") from None
    return parse(text, f"the ACL file {path}")
