"""CURVE encryption and client authentication for the publisher and the replay endpoint.

Keys are ZeroMQ certificate files (text, one public `NAME.key` and one secret
`NAME.key_secret` per party, written by `pathwatch keys generate`). The daemon holds the server
secret and a directory of authorised client public keys; a client holds the server's public key
and its own secret. A client that is not authorised completes no handshake: it receives nothing
and cannot replay. Secret files readable by group or others are refused.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator


class SecurityError(ValueError):
    """A key or key directory that cannot be used; says which and how to fix it."""


def generate_keys(directory: str | Path, name: str) -> tuple[Path, Path]:
    directory = Path(directory).expanduser()
    if directory.exists() and not directory.is_dir():
        raise SecurityError(f"{directory} is a file; give a directory for the key pair")
    for existing in (directory / f"{name}.key", directory / f"{name}.key_secret"):
        if existing.exists():  # never overwrite a key that clients or the daemon may hold
            raise SecurityError(f"{existing} already exists; choose another --name or remove it")
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(directory), name)
    os.chmod(secret, 0o600)
    os.chmod(public, 0o644)
    return Path(public), Path(secret)


def load_secret(path: str | Path) -> tuple[bytes, bytes]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise SecurityError(f"key file {path} does not exist; create one with `pathwatch keys "
                            "generate DIR --name NAME`")
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (ValueError, OSError) as e:
        raise SecurityError(f"{path} is not a ZeroMQ certificate ({e})") from None
    if not secret:
        raise SecurityError(f"{path} holds no secret key (a public .key file?); use the "
                            ".key_secret file")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise SecurityError(f"secret key {path} is readable by others (mode {mode:04o}); "
                            f"run: chmod 600 {path}")
    return public, secret


def load_public(path: str | Path) -> bytes:
    path = Path(path).expanduser()
    try:
        public, _ = zmq.auth.load_certificate(str(path))
    except (ValueError, OSError) as e:
        raise SecurityError(f"public key {path} cannot be read ({e}); copy the server's .key file") from None
    return public


class CurveServer:
    """Runs ZeroMQ's authenticator for a context and configures server sockets. The authorised
    keys are read at start and again by reload() (SIGHUP)."""

    def __init__(self, context: zmq.Context, server_secret: str | Path, authorized_dir: str | Path):
        self.public, self.secret = load_secret(server_secret)
        self.authorized = Path(authorized_dir).expanduser()
        self.keys = authorized_keys(self.authorized)
        if not self.keys:
            raise SecurityError(f"{self.authorized} holds no client public keys (*.key); copy "
                                "each client's .key file there")
        self.auth = ThreadAuthenticator(context)
        self.auth.start()
        self.auth.configure_curve(domain="*", location=str(self.authorized))

    def apply(self, socket: zmq.Socket) -> None:
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_server = True

    def reload(self, authorized_dir: str | Path | None = None) -> tuple[int, int]:
        """Read the authorised keys again (from a new directory if given); returns how many
        were added and removed. New handshakes follow the new set at once; connections made
        with a removed key are cut by the caller (rebinding its sockets)."""
        directory = Path(authorized_dir or self.authorized).expanduser()
        keys = authorized_keys(directory)  # a directory that cannot be read changes nothing
        self.auth.configure_curve(domain="*", location=str(directory))
        added, removed = len(keys - self.keys), len(self.keys - keys)
        self.authorized, self.keys = directory, keys
        return added, removed

    def stop(self) -> None:
        self.auth.stop()


def authorized_keys(directory: Path) -> set[bytes]:
    """The client public keys in a directory of `*.key` files."""
    if not directory.is_dir():
        raise SecurityError(f"{directory} is not a directory of client public keys; create it "
                            "and copy each client's .key file there")
    try:
        return set(zmq.auth.load_certificates(str(directory)))
    except (ValueError, OSError) as e:
        raise SecurityError(f"client keys in {directory} cannot be read ({e}); remove the file "
                            "that is not a ZeroMQ public key") from None


def client_options(server_public: str | Path, client_secret: str | Path):
    """A function that makes a client socket speak CURVE to this server."""
    server_key = load_public(server_public)
    public, secret = load_secret(client_secret)

    def apply(socket: zmq.Socket) -> None:
        socket.curve_serverkey = server_key
        socket.curve_publickey = public
        socket.curve_secretkey = secret
    return apply
