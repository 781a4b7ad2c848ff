"""Who approves from the CA host's command line: a signature by one of the approver's enrolled keys.

``SUDO_USER`` (or any other name the environment offers) is only a claim
(docs/security.md, "Approvers prove who they are"). ``iast-ca requests
approve`` makes a fresh challenge naming the request and the claimed
approver, asks the approver's ssh-agent to sign it with a key enrolled for
them, and admits the approval only if that signature verifies against an
enrolled, unrevoked key of an enabled user: the same test a login with that
key passes (:class:`ca.auth.pubkey.PublicKeyAuthenticator`).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable

from ca.auth.base import KeyAuthenticator, Refusal
from ca.errors import AuthenticationFailed
from ca.models import Identity
from ca.sshcert.certificates import verify_ssh_signature
from ca.sshcert.wire import WireError

CONTEXT = b"iast-ca approver proof v1\0"
AUTH_METHOD = "agent-signature"


def new_challenge(action: str, request_id: str, name: str) -> bytes:
    """Bytes never signed before: what, which request, who, when, and 32 random bytes."""
    return CONTEXT + f"{action}\0{request_id}\0{name}\0{int(time.time())}\0".encode() + secrets.token_bytes(32)


def prove(authenticators: tuple, name: str, challenge: bytes, key_blob: bytes, signature: bytes, *,
          operator: str | None) -> Identity:
    """The approver's identity if ``signature`` over ``challenge`` verifies with ``key_blob`` and
    that key may log in as ``name``; else :class:`AuthenticationFailed`."""
    try:
        verify_ssh_signature(key_blob, signature, challenge)
    except WireError as e:
        raise AuthenticationFailed(f"the signature from your ssh-agent does not verify: {e}") from None
    for authn in authenticators:
        if isinstance(authn, KeyAuthenticator):
            found = authn.check_key(name, key_blob, "cli", time.time())
            if not isinstance(found, Refusal):
                return Identity(user=name, auth_methods=(AUTH_METHOD,), mfa=False, source_address="cli",
                                login_key=found.login_key, operator=operator)
    raise AuthenticationFailed(f"that key is not an enrolled key of {name}")


def agent_signature(agent_path: str | None, challenge: bytes,
                    wanted: Callable[[bytes], bool]) -> tuple[bytes, bytes]:
    """(public key blob, signature) from the first key in the ssh-agent at ``agent_path``
    that ``wanted`` accepts; :class:`AuthenticationFailed` when there is none."""
    import asyncssh

    if not agent_path:
        raise AuthenticationFailed("no ssh-agent (SSH_AUTH_SOCK is not set): approving from the CA host needs "
                                   "your agent holding one of your enrolled keys ('sudo --preserve-env="
                                   "SSH_AUTH_SOCK ...'), or approve over the service: ssh CA approve ID")

    async def sign() -> tuple[bytes, bytes]:
        try:
            agent = await asyncssh.connect_agent(agent_path)
        except (OSError, asyncssh.Error) as e:
            raise AuthenticationFailed(f"cannot reach the ssh-agent at {agent_path}: {e}") from None
        try:
            for key in await agent.get_keys():
                blob = key.public_data
                if wanted(blob):
                    if key.algorithm == b"ssh-rsa":
                        key.set_sig_algorithm(b"rsa-sha2-512")
                    return blob, await key.sign_async(challenge)
        finally:
            agent.close()
        raise AuthenticationFailed("your ssh-agent holds none of your enrolled keys")

    return asyncio.run(sign())


def proven_identity(authenticators: tuple, agent_path: str | None, action: str, request_id: str, name: str, *,
                    operator: str | None) -> Identity:
    """The whole proof: a fresh challenge, signed by the agent, checked (see the module docstring)."""
    challenge = new_challenge(action, request_id, name)

    def enrolled(blob: bytes) -> bool:
        return any(isinstance(a, KeyAuthenticator)
                   and not isinstance(a.check_key(name, blob, "cli", time.time()), Refusal) for a in authenticators)

    blob, signature = agent_signature(agent_path, challenge, enrolled)
    return prove(authenticators, name, challenge, blob, signature, operator=operator)
