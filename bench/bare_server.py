"""The baseline server of login-fresh and login-kept: bare asyncssh, no policy, no audit.

It accepts a key if it is in the authorized list for that user name
(``USER KEYTYPE BASE64`` lines), and answers ``sign`` by signing the public
key on stdin with the same certificate fields the CA's bench role yields
(principal = the user, 1 h, permit-pty and port forwarding). Signing runs
on the event loop: no thread, no database, no checks. This is the floor an
asyncssh-based SSH CA pays for the SSH protocol and one signature.

Run as ``python -m bench.bare_server --listen 127.0.0.1:0 --host-key F --ca-key F --authorized F``;
it logs ``{"msg": "listening", "port": N}`` on stderr like ``iast-ca serve``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal
import sys
import time

import asyncssh

from bench.common import CERT_FIELDS, CLOCK_SKEW, TTL


def load_authorized(path: str) -> dict[str, set[bytes]]:
    out: dict[str, set[bytes]] = {}
    for line in open(path):
        if line.strip():
            user, key_line = line.split(None, 1)
            out.setdefault(user, set()).add(asyncssh.import_public_key(key_line).public_data)
    return out


class BareServer(asyncssh.SSHServer):
    authorized: dict[str, set[bytes]] = {}

    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return key.public_data in self.authorized.get(username, ())


def make_handler(ca_key: asyncssh.SSHKey):
    serials = itertools.count(1)

    async def handle(process: asyncssh.SSHServerProcess) -> None:
        user = process.get_extra_info("username")
        if (process.command or "").split()[:1] != ["sign"]:
            process.stderr.write("error: only sign\n")
            process.exit(2)
            return
        line = await process.stdin.read()
        try:
            key = asyncssh.import_public_key(line)
        except (ValueError, asyncssh.KeyImportError):
            process.stderr.write("error: bad key\n")
            process.exit(2)
            return
        serial = next(serials)
        now = int(time.time())
        cert = ca_key.generate_user_certificate(
            key, f"bare:{user}:dev:{serial}", serial=serial, principals=[user],
            valid_after=now - CLOCK_SKEW, valid_before=now + TTL, sig_alg=ca_key.get_algorithm(), **CERT_FIELDS)
        process.stdout.write(cert.export_certificate("openssh").decode("ascii"))
        process.exit(0)

    return handle


async def main(args: argparse.Namespace) -> None:
    BareServer.authorized = load_authorized(args.authorized)
    ca_key = asyncssh.read_private_key(args.ca_key)
    host, port = args.listen.rsplit(":", 1)
    # asyncssh rebuilds the server options at every user authentication (to apply config Match
    # blocks by user name); a host key given as a path is read and parsed again each time.
    host_key = asyncssh.read_private_key(args.host_key) if args.preload_host_key else args.host_key
    server = await asyncssh.listen(
        host, int(port), server_host_keys=[host_key], server_factory=BareServer,
        process_factory=make_handler(ca_key), login_timeout=30,
        allow_pty=False, agent_forwarding=False, x11_forwarding=False, allow_scp=False,
        encoding="utf-8", line_editor=False, keepalive_interval=30,
    )
    print(json.dumps({"msg": "listening", "port": server.sockets[0].getsockname()[1]}), file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", required=True)
    p.add_argument("--host-key", required=True)
    p.add_argument("--ca-key", required=True)
    p.add_argument("--authorized", required=True)
    p.add_argument("--preload-host-key", action="store_true",
                   help="pass asyncssh the host key object, not its path (iast-ca serve passes the path)")
    asyncio.run(main(p.parse_args()))
