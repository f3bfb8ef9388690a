"""Certificates for the security tests, made in-process with ``kv_cli.certs`` (what ``kv certs`` runs).

``Pki(dir)`` is a cluster's CA with node certificates 1..N, ``admin`` and any client asked for; a second
``Pki`` is a foreign CA. ``expired`` and ``chain_of`` make the odd certificates the tests need.
"""
from __future__ import annotations

import datetime
from pathlib import Path

from kv_cli.certs import Authority, add_client, init_dir, write_pairs


class Pki:
    def __init__(self, directory: Path, nodes: int = 3) -> None:
        self.dir = Path(directory)
        init_dir(self.dir, nodes=nodes)

    @property
    def cacert(self) -> str:
        return str(self.dir / "ca.pem")

    def files(self, name: str) -> dict[str, str]:
        """cacert/cert/key of client ``name`` (made on first use) or of ``node-N``."""
        if not (self.dir / f"{name}.pem").exists():
            add_client(self.dir, name)
        return {"cacert": self.cacert, "cert": str(self.dir / f"{name}.pem"), "key": str(self.dir / f"{name}.key")}

    def expired(self, stem: str, common_name: str, *, node_id: int | None = None) -> dict[str, str]:
        """A certificate of this CA named ``common_name`` (a client's, or node ``node_id``'s) that expired
        yesterday, in ``stem``.pem and ``stem``.key."""
        now = datetime.datetime.now(datetime.UTC)
        cert, key = Authority.load(self.dir).issue(common_name, node_id=node_id,
                                                   not_before=now - datetime.timedelta(days=30),
                                                   not_after=now - datetime.timedelta(days=1))
        write_pairs(self.dir, [(stem, cert, key)])
        return {"cacert": self.cacert, "cert": str(self.dir / f"{stem}.pem"), "key": str(self.dir / f"{stem}.key")}

    def chain_of(self, name: str, copies: int) -> dict[str, str]:
        """Client ``name``'s certificate followed by ``copies`` copies of the CA certificate: a chain of
        ``copies`` * ~600 bytes for the handshake."""
        files = self.files(name)
        path = self.dir / f"{name}-chain{copies}.pem"
        path.write_bytes(Path(files["cert"]).read_bytes() + Path(self.cacert).read_bytes() * copies)
        return {**files, "cert": str(path)}
