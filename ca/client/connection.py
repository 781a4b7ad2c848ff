"""The connection to the CA: pin its host key, authenticate, run protocol commands, get a certificate.

The flow of ``login`` (docs/architecture.md, "The one path every certificate takes"):

1. Pin the CA's service host key (docs/security.md rule 18): fetch the key the server
   presents, compare its SHA256 fingerprint with the pin *before* any
   credential is sent, then connect accepting exactly that key, so that the
   key checked is the key used (no time-of-check/time-of-use gap).
2. Authenticate: ``-i KEY`` (an enrolled private key), else the keys in
   ssh-agent, else keyboard-interactive (password, then one-time code), all
   through caller-supplied prompt callbacks. The library never reads a
   terminal itself. With ``sso``: only keyboard-interactive, as the CA's
   SSO (the device flow: the IdP's URL and code go to ``Prompter.sign_in``
   while the CA waits for the approval). With ``workload_token``: as the
   reserved user ``workload``, which the CA accepts for one ``sign --token -``
   whose token (the first stdin line) authenticates it.
3. Generate a fresh Ed25519 key, run ``sign --json`` with its public key on
   stdin (see :mod:`ca.service.protocol`); when a role needs a second factor and a
   code callback exists, ask for the code and retry once with ``--otp``.
4. Hand the certificate to ssh: into ssh-agent with a lifetime equal to the
   certificate's remaining validity, or as ``id_ed25519`` and
   ``id_ed25519-cert.pub`` (0600, atomically) in an output directory.

Every failure is a :class:`ca.errors.CAError` with the exit status the
protocol uses (1 error, 2 usage, 3 denied by policy, 4 authentication).

asyncssh is imported inside the functions that need it: ``iast-ssh --help``
and ``iast-ssh config`` start without paying for it.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ca.client.agent import add_to_agent, agent_socket, open_agent
from ca.client.config import (
    DEFAULT_CA,
    Profile,
    check_fingerprint,
    config_path,
    format_address,
    format_addresses,
    load_config,
    parse_addresses,
    save_config,
)
from ca.client.files import check_out_dir, default_out_dir, krl_age, save_krl, write_files
from ca.client.loop import run_async
from ca.client.results import LoginResult
from ca.errors import (
    AuthenticationFailed,
    BadKey,
    CAError,
    HostKeyChanged,
    MFARequired,
    PolicyDenied,
    UsageError,
)
from ca.rules import WORKLOAD_USER

__all__ = ["AUTH_FAILED_MESSAGE", "CONNECT_TIMEOUT", "Client", "Prompter"]


CONNECT_TIMEOUT = 15.0
# With several CA addresses (replicas), how long one may take to answer before the next is tried.
FAILOVER_TIMEOUT = 3.0
# A login over OpenSSH fetches the CA's KRL (for 'status') when the one kept is older than this.
KRL_MAX_AGE = 600.0

AUTH_FAILED_MESSAGE = "authentication failed: wrong password or code, an unknown key, or the account is locked"


@dataclass(frozen=True)
class Prompter:
    """How the library asks the person at the keyboard. Leave a callback None when nobody can answer
    (a script): the library then never tries the method that needs it.

    The callbacks are called on the event loop's thread and may block (a
    person typing): nothing else needs the loop meanwhile, and an interrupt
    (Ctrl-C) then stops the whole login at once instead of waiting for a
    prompt thread to return.

    ``secret(prompt)`` reads hidden input (the password, a key's passphrase);
    ``code(prompt)`` reads a one-time code; ``confirm_host_key(ca, fingerprint)``
    asks whether to trust a CA host key seen for the first time.
    """

    secret: Callable[[str], str] | None = None
    code: Callable[[str], str] | None = None
    confirm_host_key: Callable[[str, str], bool] | None = None
    #: ``sign_in(text, url)``: show the IdP's sign-in instructions (URL and code) during an
    #: SSO login; ``url`` is the one to open in a browser (the complete one when the IdP gives it)
    sign_in: Callable[[str, str | None], None] | None = None

    @property
    def can_log_in(self) -> bool:
        return self.secret is not None and self.code is not None


# --------------------------------------------------------------------------
# Errors


def _ca_error(address: str, e: BaseException) -> CAError:
    """Turn what asyncssh and the OS raise into the error tree."""
    import asyncio

    import asyncssh

    if isinstance(e, CAError):
        return e
    if isinstance(e, asyncssh.PermissionDenied):
        return AuthenticationFailed(AUTH_FAILED_MESSAGE)
    if isinstance(e, asyncssh.HostKeyNotVerifiable):
        return HostKeyChanged(f"the CA at {address} presented a host key that is not the pinned one: {e.reason}")
    if isinstance(e, asyncssh.DisconnectError) and e.code == asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE:
        return AuthenticationFailed(f"{AUTH_FAILED_MESSAGE} ({e.reason})")
    if isinstance(e, (asyncio.TimeoutError, TimeoutError)):
        return CAError(f"cannot reach the CA at {address}: timed out")
    if isinstance(e, asyncssh.Error):
        return CAError(f"cannot reach the CA at {address}: {e.reason}")
    import socket

    if isinstance(e, socket.gaierror):
        return CAError(f"cannot reach the CA at {address}: cannot resolve host {address.rsplit(':', 1)[0]} "
                       f"({e.strerror or e})")
    if isinstance(e, OSError):
        why = os.strerror(e.errno) if e.errno else (e.strerror or str(e))
        return CAError(f"cannot reach the CA at {address}: {why}")
    return CAError(f"cannot reach the CA at {address}: {e}")


def _reply_error(status: int | None, stdout: str, stderr: str) -> CAError:
    """The CA's refusal, as the error of the same exit status (ca.service.protocol)."""
    message, code = "", None
    try:
        obj = json.loads(stdout)
        if isinstance(obj, dict) and isinstance(obj.get("message"), str):
            message, code = obj["message"], obj.get("error")
    except ValueError:
        pass
    if not message:
        line = (stderr.strip().splitlines() or [""])[-1]
        message = line[len("error: "):] if line.startswith("error: ") else line
    message = message or f"the CA answered with exit status {status}"
    if status == 2:
        return UsageError(message)
    if status == 3:
        return PolicyDenied(message)
    if status == 4:
        return MFARequired(message) if code == MFARequired.code else AuthenticationFailed(message)
    return CAError(f"the CA refused: {message}" if status is not None else f"the CA closed the request: {message}")


# --------------------------------------------------------------------------
# The client


class Client:
    """A client of one CA: where it is, its pinned host key, who we are, how we prove it.

    ``ca`` and ``ca_fingerprint`` default to the config file's; the config's
    pin applies only to the config's CA address. ``identity`` is a private
    key file; without one the keys in ssh-agent are used (unless
    ``use_agent`` is False), then keyboard-interactive if ``prompter`` can
    ask for a password and a code.

    ``sso``: log in through the CA's identity provider instead (``""``: the CA's
    first, else a ``[oidc.NAME]`` name); the prompter's ``sign_in`` shows the URL
    and code. ``workload_token``: a workload's signed token (``login`` sends it
    with ``sign --token -``); the connection is the reserved user ``workload``.
    """

    def __init__(self, ca: str | None = None, *, ca_fingerprint: str | None = None, user: str | None = None,
                 identity: str | os.PathLike | None = None, use_agent: bool = True,
                 agent_path: str | None = None, prompter: Prompter | None = None,
                 config_file: str | os.PathLike | None = None, timeout: float = CONNECT_TIMEOUT,
                 sso: str | None = None, workload_token: str | None = None, profile: str | None = None,
                 remember: bool = True):
        self.config_file = Path(config_file) if config_file is not None else config_path()
        # False for the host commands: a host's settings are its command line (or unit file), and root's
        # own profile must not take the host key as its identity (README, "Trust a host in one command").
        self.remember = remember
        self.config = load_config(self.config_file)
        # The profile: the one named, else the one for --ca's addresses (a new one if none is), else
        # the top-level one (docs/security.md rule 81: a pin belongs to the addresses it was saved with).
        if profile is not None:
            self.profile_name: str | None = profile
            self.profile = self.config.profile(profile)
            cfg_addresses = parse_addresses(self.profile.ca or DEFAULT_CA)
            self.addresses = parse_addresses(ca) if ca else cfg_addresses
        elif ca:
            self.addresses = parse_addresses(ca)
            found = self.config.for_addresses(self.addresses)
            if found is not None:
                self.profile_name, self.profile = found
            elif self.config.ca is None and self.config.ca_fingerprint is None:
                self.profile_name, self.profile = None, self.config.default  # the first CA: top level
            else:
                self.profile_name, self.profile = self.addresses[0][0], Profile()
            cfg_addresses = parse_addresses(self.profile.ca) if self.profile.ca else self.addresses
        else:
            self.profile_name, self.profile = None, self.config.default
            cfg_addresses = self.addresses = parse_addresses(self.profile.ca or DEFAULT_CA)
        # Replicas of one CA share one host key, so one pin covers the list (tried in order).
        self.host, self.port = self.addresses[0]
        self.address = format_address(self.host, self.port)
        if ca_fingerprint:
            self.pin: str | None = check_fingerprint(ca_fingerprint)
        elif self.addresses == cfg_addresses:
            self.pin = self.profile.ca_fingerprint
        else:
            self.pin = None  # a pin belongs to the addresses it was saved with
        if sso is not None and workload_token is not None:
            raise UsageError("--sso and a workload token exclude each other")
        if (sso is not None or workload_token is not None) and identity is not None:
            raise UsageError("-i KEY and --sso/--token-file/--token-env exclude each other")
        self.sso = sso
        self.workload_token = workload_token
        self.role_hint: str | None = None  # sent with --sso as a role:NAME submethod (max_auth_age)
        self.given_user = user
        self.user = (WORKLOAD_USER if workload_token is not None
                     else user or self.profile.user or _local_user())
        self.given_identity = Path(identity).expanduser().absolute() if identity is not None else None
        remembered = self.profile.identity if sso is None and workload_token is None else None
        self.identity = self.given_identity or (Path(remembered).expanduser() if remembered else None)
        self.agent_path = (agent_path or agent_socket()) if use_agent else None
        self.prompter = prompter or Prompter()
        self.timeout = timeout
        self.notes: list[str] = []
        self.enrol_code: str | None = None  # set by enroll(): the one-time code is the login

    # -- pinning -------------------------------------------------------------

    async def _host_key(self):
        """The CA's service host key, checked against the pin (or confirmed by the user). Sends no credential:
        the connection ends after the key exchange."""
        import asyncio

        import asyncssh

        # The key exchange sends nothing of ours, so reach the CA first: "connection refused" or
        # "cannot resolve" is the answer a person needs before "not pinned".
        try:
            key = await asyncio.wait_for(
                asyncssh.get_server_host_key(self.host, self.port, config=None), self.timeout)
        except (OSError, asyncio.TimeoutError, asyncssh.Error) as e:
            raise _ca_error(self.address, e) from None
        if key is None:
            raise HostKeyChanged(f"the CA at {self.address} presented no host key")
        got = key.get_fingerprint("sha256")
        if self.pin is None and self.prompter.confirm_host_key is None:
            raise UsageError(
                f"the service host key of the CA at {self.address} is not pinned and there is no terminal to "
                f"confirm it: pass --ca-fingerprint SHA256:... (its administrator reads it from 'iast-ca info': "
                f"the service host key, not the CA key) or set ca_fingerprint in {self.config_file}")
        if self.pin is not None:
            if got != self.pin:
                raise HostKeyChanged(
                    f"the pin does not match the service host key of {self.address}: pinned {self.pin}, the "
                    f"service presents {got}. Check the address, and compare the pin with the 'service host key' "
                    f"line of 'iast-ca info' on the CA (the CA key is another key); if the service's host key "
                    f"was really replaced, update ca_fingerprint in {self.config_file} (or pass --ca-fingerprint)")
            self._cache_host_key(key)
            return key
        ok = self.prompter.confirm_host_key(self.address, got)
        if not ok:
            raise HostKeyChanged(f"the service host key {got} was not accepted; nothing was sent")
        self.pin = got
        self._remember_pin(always=True)
        self._cache_host_key(key)
        return key

    def _cache_host_key(self, key) -> None:
        """Keep the service host key that just matched the pin, for the next login over OpenSSH
        (docs/security.md rule 76: that login checks it against the pin again before using it)."""
        from ca.client.openssh import remember_host_key

        remember_host_key(self.address, key.export_public_key("openssh").decode())

    def _remember_pin(self, always: bool = False) -> None:
        """Remember the CA in its profile after a login: its addresses and pin (after the user confirmed
        it, or on first use), and the user name and key given on the command line, when the profile has
        none. Never overwrites a pin or a name the user set without asking."""
        if not self.remember:
            return
        p = self.profile
        listed = format_addresses(self.addresses)
        same = p.ca_fingerprint == self.pin and parse_addresses(p.ca or DEFAULT_CA) == self.addresses
        changes: dict[str, str] = {}
        if not same and (always or (p.ca is None and p.ca_fingerprint is None)):
            changes.update(ca=listed, ca_fingerprint=self.pin)
        if self.workload_token is None:
            if self.given_user and p.user is None:
                changes["user"] = self.given_user
            if self.given_identity is not None and p.identity is None and self.given_identity.exists():
                changes["identity"] = str(self.given_identity)
        if not changes:
            return
        self.profile = replace(p, **changes)
        self.config = self.config.with_profile(self.profile_name, self.profile)
        save_config(self.config, self.config_file)
        what = ", ".join(f"{k} {v}" for k, v in changes.items() if k != "ca_fingerprint")
        if "ca_fingerprint" in changes:
            what = what.replace(f"ca {listed}", f"the CA {listed} and its service host key {self.pin}")
        where = f" (profile {self.profile_name})" if self.profile_name else ""
        self.notes.append(f"saved {what} in {self.config_file}{where}")

    # -- authentication ------------------------------------------------------

    def _load_identity(self):
        import asyncssh

        path = self.identity
        assert path is not None
        try:
            return asyncssh.read_private_key(path)
        except OSError as e:
            raise BadKey(f"cannot read the key {path}: {e.strerror or e}") from None
        except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as e:
            if "passphrase" not in str(e).lower():
                if _is_public_key(path):
                    private = path.with_suffix("") if path.suffix == ".pub" else None
                    raise BadKey(f"{path} is a public key: give the private key with -i"
                                 + (f" ({private})" if private else "")) from None
                raise BadKey(f"cannot read the key {path}: {e}") from None
        if self.prompter.secret is None:
            raise BadKey(f"the key {path} is encrypted and there is no terminal to ask for its passphrase "
                         "(load it into ssh-agent instead)")
        passphrase = self.prompter.secret(f"Passphrase for {path}: ")
        try:
            return asyncssh.read_private_key(path, passphrase)
        except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError, ValueError):
            raise BadKey(f"wrong passphrase for the key {path}") from None

    def _handler(self):
        import asyncssh

        prompter = self.prompter
        client = self

        class Handler(asyncssh.SSHClient):
            """Answers keyboard-interactive: a password (hidden), then a one-time code. One try per login:
            a second challenge means the first answers were refused."""

            def __init__(self) -> None:
                self.answered = 0

            def kbdint_auth_requested(self):
                if client.enrol_code is not None:
                    return "enrol"
                if client.sso is not None:
                    # "sso[:NAME]", and "role:R" so that the CA asks the IdP for the sign-in R needs
                    wanted = [f"sso:{client.sso}" if client.sso else "sso"]
                    if client.role_hint:
                        wanted.append(f"role:{client.role_hint}")
                    return ",".join(wanted)
                # "password": the CA's password + code (with SSO configured, plain keyboard-interactive is SSO)
                return "password" if prompter.can_log_in else None

            def kbdint_challenge_received(self, name, instructions, lang, prompts):
                if not prompts:
                    if client.sso is not None and instructions and prompter.sign_in is not None:
                        prompter.sign_in(instructions.strip(), sign_in_url(instructions))
                    return []
                if client.enrol_code is not None:
                    if self.answered or len(prompts) != 1:
                        return None  # refused once already
                    self.answered += 1
                    return [client.enrol_code]
                answers = []
                for text, echo in prompts:
                    if self.answered >= 2:
                        return None  # refused once already: give up rather than loop
                    ask = prompter.code if "code" in text.lower() else prompter.secret
                    assert ask is not None
                    answers.append(ask(text))
                    self.answered += 1
                return answers

        return Handler

    async def _connect(self, stack, *, certificates: bool = True):
        """Pin, then connect and authenticate; returns the connection (closed by ``stack``).

        Nothing secret leaves this machine before the host key matched the pin. With
        ``certificates`` (every command but ``sign``) the keys of the iast certificates held for
        this user are offered first (docs/security.md rule 80), unless ``-i KEY`` was given.
        """
        import asyncssh

        agent_keys: list = []
        cert_keys: list = []
        methods: list[str] = []
        agent = None
        if self.workload_token is not None:
            # As the reserved user ``workload``: SSH "none", which the CA accepts only for one
            # ``sign --token -`` (the token, sent after the host key matched, authenticates it).
            methods.append("none")
        elif self.sso is not None:
            if self.prompter.sign_in is None:
                raise UsageError("--sso needs somewhere to show the sign-in URL and code")
            methods.append("keyboard-interactive")
        elif self.enrol_code is not None:
            methods.append("keyboard-interactive")  # the code, and nothing else
        elif self.agent_path and (self.identity is None or (certificates and self.given_identity is None)):
            try:
                agent = await open_agent(self.agent_path)
            except CAError as e:
                self.notes.append(str(e))
            else:
                stack.push_async_callback(agent.wait_closed)
                stack.callback(agent.close)
                # Certificates (ours among them) are never enrolled keys: offering them would only
                # use up the CA's authentication attempts.
                agent_keys = [kp for kp in await agent.get_keys()
                              if not kp.algorithm.endswith(b"-cert-v01@openssh.com")] if self.identity is None else []
        plain = self.sso is None and self.workload_token is None and self.enrol_code is None
        if certificates and plain and self.given_identity is None:
            cert_keys = await self._certificate_keys(agent)
        if plain and (self.identity is not None or agent_keys or cert_keys):
            methods.append("publickey")
        if plain and self.prompter.can_log_in:
            methods.append("keyboard-interactive")
        if not methods:
            # Reach the CA first (the key exchange only, nothing of ours is sent): "connection refused" or a
            # wrong pin is the answer a person needs before "no way to authenticate" (README walk: a typo'd
            # port said only the latter).
            await self._probe()
            raise AuthenticationFailed(
                "no way to authenticate to the CA: give -i KEY (an enrolled key), load an enrolled key into "
                "ssh-agent, or run on a terminal to log in with a password and one-time code")
        client_keys = list(cert_keys)
        if self.identity is not None and plain:
            try:
                client_keys.append(self._load_identity())
            except BadKey as e:
                if not cert_keys or self.given_identity is not None:
                    raise
                self.notes.append(f"{e}; used the certificate")
        else:
            client_keys += agent_keys
        conn = None
        unreachable: list[str] = []
        for host, port in self.addresses:
            self.host, self.port, self.address = host, port, format_address(host, port)
            timeout = self.timeout if len(self.addresses) == 1 else min(self.timeout, FAILOVER_TIMEOUT)
            try:
                conn = await self._connect_one(methods, client_keys, timeout)
                break
            except _Unreachable as e:
                # Only a CA that does not answer is skipped: a wrong host key or a refused login
                # is an answer, and fails the login at once (no retry elsewhere with the credential).
                unreachable.append(str(e))
                if len(self.addresses) == 1:
                    raise e.error from None
        if conn is None:
            raise CAError("no CA address answered: " + "; ".join(unreachable))
        if unreachable:
            self.notes.append("skipped: " + "; ".join(unreachable))
        stack.push_async_callback(conn.wait_closed)
        stack.callback(conn.close)
        self._remember_pin()
        return conn

    async def _certificate_keys(self, agent) -> list:
        """The keys of the current iast certificates held for this user (newest first, at most
        three): from ssh-agent, offered as the plain key and signed by the agent through the
        certificate it holds, and from the files 'login --no-agent' wrote (default directory)."""
        import asyncssh
        from asyncssh.agent import SSHAgentKeyPair

        from ca.client.agent import held_in
        from ca.client.files import file_held
        from ca.sshcert.wire import Reader

        now = time.time()

        def usable(h) -> bool:
            return h.user == self.user and h.valid_after <= now < h.valid_before

        found: list[tuple[int, Any]] = []
        if agent is not None:
            for _, h in await held_in(agent):
                if usable(h):
                    pair = SSHAgentKeyPair(agent, Reader(h.key_blob).text().encode(), h.key_blob,
                                           (h.comment or h.key_id).encode())
                    pair.key_public_data = h.blob  # the agent holds the key under its certificate
                    found.append((h.valid_before, pair))
        for h in file_held(default_out_dir()):
            key_path = h.key_path
            if usable(h) and key_path is not None:
                try:
                    key = asyncssh.read_private_key(key_path)
                except (OSError, asyncssh.KeyImportError, asyncssh.KeyEncryptionError):
                    continue
                if key.public_data == h.key_blob:
                    found.append((h.valid_before, key))
        found.sort(key=lambda t: -t[0])
        return [k for _, k in found[:3]]

    async def _probe(self) -> None:
        """Check that one of the CA addresses answers with the pinned service host key; raise what went wrong
        (the error of the only address, or every address's) when none does."""
        unreachable: list[CAError] = []
        for host, port in self.addresses:
            self.host, self.port, self.address = host, port, format_address(host, port)
            saved = self.timeout
            self.timeout = saved if len(self.addresses) == 1 else min(saved, FAILOVER_TIMEOUT)
            try:
                await self._host_key()
                return
            except CAError as e:
                if not (type(e) is CAError and "cannot reach" in e.message):
                    raise
                unreachable.append(e)
            finally:
                self.timeout = saved
        if len(unreachable) == 1:
            raise unreachable[0]
        raise CAError("no CA address answered: " + "; ".join(str(e) for e in unreachable))

    async def _connect_one(self, methods: list[str], client_keys: list, timeout: float):
        """Pin, then connect to ``self.address`` and authenticate; raises _Unreachable if it does not answer."""
        import asyncio

        import asyncssh

        saved, self.timeout = self.timeout, timeout
        try:
            try:
                host_key = await self._host_key()
            except CAError as e:
                if type(e) is CAError and "cannot reach" in e.message:
                    raise _Unreachable(e) from None
                raise
        finally:
            self.timeout = saved
        try:
            return await asyncssh.connect(
                self.host, self.port, username=self.user, config=None,
                # Only the key just checked is accepted (host keys, CA keys, revoked keys).
                known_hosts=([host_key], [], []),
                client_factory=self._handler(), client_keys=client_keys or None, agent_path=None,
                agent_forwarding=False, password=None, preferred_auth=methods,
                connect_timeout=timeout, keepalive_interval=30,
            )
        except (OSError, asyncio.TimeoutError, asyncssh.ConnectionLost) as e:
            raise _Unreachable(_ca_error(self.address, e)) from None
        except asyncssh.PermissionDenied as e:
            if self.workload_token is not None:
                raise AuthenticationFailed(f"the CA at {self.address} takes no workload tokens "
                                           "(it has no [workload.*] section)") from None
            raise _ca_error(self.address, e) from None
        except asyncssh.Error as e:
            raise _ca_error(self.address, e) from None

    async def _command(self, conn, args: list[str], input: str | None = None) -> str:
        """Run one protocol command; return its stdout, or raise the error its exit status names."""
        import asyncssh

        try:
            process = await conn.create_process(shlex.join(args))
            try:
                if input is not None:
                    process.stdin.write(input)
                process.stdin.write_eof()
            except (BrokenPipeError, asyncssh.Error):
                pass  # the service answered before reading it all (a refusal): its answer follows
            result = await process.wait(check=False)
        except (OSError, asyncssh.Error) as e:
            raise _ca_error(self.address, e) from None
        stdout = result.stdout if isinstance(result.stdout, str) else (result.stdout or b"").decode()
        stderr = result.stderr if isinstance(result.stderr, str) else (result.stderr or b"").decode()
        if result.exit_status != 0:
            raise _reply_error(result.exit_status, stdout, stderr)
        return stdout

    async def _session(self, work, certificates: bool = True):
        from contextlib import AsyncExitStack

        async with AsyncExitStack() as stack:
            conn = await self._connect(stack, certificates=certificates)
            return await work(conn)

    def _run(self, work, *, certificates: bool = True):
        import asyncio

        import asyncssh

        try:
            return run_async(self._session(work, certificates))
        except CAError:
            raise
        except (OSError, asyncio.TimeoutError, asyncssh.Error) as e:
            raise _ca_error(self.address, e) from None

    # -- commands ------------------------------------------------------------

    def whoami(self) -> dict[str, Any]:
        """Who the CA thinks we are, and how we authenticated."""
        return self._run(lambda conn: self._json(conn, ["whoami", "--json"]))

    def roles(self) -> list[dict[str, Any]]:
        """The roles this user may request, with their limits."""
        return self._run(lambda conn: self._json(conn, ["roles", "--json"]))

    def ca_keys(self) -> list[str]:
        """The CA public keys (the lines hosts put in TrustedUserCAKeys)."""
        async def work(conn):
            out = await self._command(conn, ["ca-keys"])
            return [line.strip() for line in out.splitlines() if line.strip()]
        return self._run(work)

    def refresh_krl(self) -> bytes:
        """The CA's KRL, kept for ``status`` (which marks the certificates it revokes)."""
        data = self.krl()
        save_krl(format_addresses(self.addresses), data)
        return data

    def krl(self) -> bytes:
        """The CA's current KRL (binary), as served by the ``krl`` command."""
        import base64
        import binascii

        async def work(conn):
            return await self._command(conn, ["krl"])

        try:
            return base64.b64decode("".join(self._run(work).split()), validate=True)
        except (binascii.Error, ValueError):
            raise CAError("the CA's KRL answer is not base64") from None

    def enroll(self, code: str, *, key_line: str | None = None, password: str | None = None,
               totp: bool = False) -> dict[str, Any]:
        """Redeem a one-time enrolment code ('iast-ca user invite'): register this user's own public
        key and/or password and a new TOTP secret (in the answer, for this person only). The code is
        the login (keyboard-interactive, submethod ``enrol``); nothing else is offered."""
        from ca.sshcert.userkey import parse_user_key

        if key_line is not None:
            parse_user_key(key_line)  # a private key, or anything else, never leaves this machine
        self.enrol_code = code.strip()
        args = ["enroll", "--json"] + (["--totp"] if totp else []) + (["--password-stdin"] if password is not None
                                                                      else [])
        stdin = (password + "\n" if password is not None else "") + (key_line.strip() + "\n" if key_line else "")
        try:
            return self._run(lambda conn: self._json(conn, args, stdin), certificates=False)
        finally:
            self.enrol_code = None

    # -- access requests (roles with approval) ------------------------------

    def request_access(self, *, role: str, reason: str, ttl: str | int | None = None) -> dict[str, Any]:
        """Ask for temporary access to a role that needs approval; the CA's answer has the request ``id``."""
        args = ["request", "--json", "--role", role, "--reason", reason]
        if ttl is not None:
            args += ["--ttl", str(_seconds(ttl))]
        return self._run(lambda conn: self._json(conn, args))

    def requests(self) -> list[dict[str, Any]]:
        """Pending requests this user may decide, then their own requests."""
        return self._run(lambda conn: self._json(conn, ["requests", "--json"]))

    def approve(self, request_id: str, comment: str | None = None) -> dict[str, Any]:
        """Approve someone else's request (this user must be one of its approvers)."""
        args = ["approve", request_id, "--json"] + (["--comment", comment] if comment else [])
        # A certificate never decides a request (docs/security.md rule 80): prove who we are with the
        # key, password or SSO, even while a certificate is held (else the profile's -i key is unused).
        return self._run(lambda conn: self._json(conn, args), certificates=False)

    def deny(self, request_id: str, comment: str) -> dict[str, Any]:
        """Deny a request, saying why; one denial closes it."""
        return self._run(lambda conn: self._json(conn, ["deny", request_id, "--comment", comment, "--json"]),
                         certificates=False)

    def cancel(self, request_id: str) -> dict[str, Any]:
        """Withdraw this user's own request."""
        return self._run(lambda conn: self._json(conn, ["cancel", request_id, "--json"]))

    async def _json(self, conn, args: list[str], input: str | None = None) -> Any:
        out = await self._command(conn, args, input)
        try:
            return json.loads(out)
        except ValueError:
            raise CAError(f"the CA's answer to {args[0]} is not JSON: {out[:80]!r}") from None

    def login(self, *, role: str | None = None, ttl: str | int | None = None, reason: str | None = None,
              otp: str | None = None, no_agent: bool = False, out_dir: str | os.PathLike | None = None,
              now: Callable[[], float] = time.time, request_id: str | None = None) -> LoginResult:
        """Get a certificate for a fresh Ed25519 key and put it into ssh-agent, or into files.

        ``role`` defaults to the config's (then the policy's default); with
        ``request_id`` (an approved access request) it, the ttl and the
        reason default to the request's. With
        ``otp`` the code is sent at once; otherwise, when the role needs a
        second factor and the prompter can ask for a code, it asks and
        retries once.
        """
        args = ["sign", "--json"]
        if request_id:
            args += ["--request", request_id]
        else:
            role = role or self.profile.role  # the request names its own role
        if role:
            args += ["--role", role]
        if ttl is not None:
            args += ["--ttl", str(_seconds(ttl))]
        if reason:
            args += ["--reason", reason]
        if self.workload_token is not None:
            if otp or request_id:
                raise UsageError("a workload token takes no --otp or --request")
            args += ["--token", "-"]
        self.role_hint = role
        out = Path(out_dir) if out_dir is not None else default_out_dir()
        use_agent = self.agent_path if not no_agent else None
        if not use_agent:  # before a certificate is asked for, not after: none issued into the void
            check_out_dir(out)
        if use_agent:
            from ca.client.openssh import Fallback

            try:
                return self._login_openssh(args, otp, use_agent, out, now)
            except Fallback:
                pass  # not a login for OpenSSH, or it could not tell: the asyncssh way decides (rule 76)
        import asyncssh

        key = asyncssh.generate_private_key("ssh-ed25519")
        public_line = key.export_public_key("openssh").decode().strip() + "\n"
        if self.workload_token is not None:
            public_line = self.workload_token + "\n" + public_line  # sign --token -: the token first

        async def work(conn):
            try:
                return await self._json(conn, args + (["--otp", otp] if otp else []), public_line)
            except MFARequired:
                if otp or self.prompter.code is None or self.workload_token is not None:
                    raise
            code = self.prompter.code("One-time code: ")
            return await self._json(conn, args + ["--otp", code.strip()], public_line)

        async def work_and_krl(conn):
            reply = await work(conn)
            try:  # the KRL too, on the same connection: 'status' marks what it revokes
                krl = await self._command(conn, ["krl"])
                save_krl(format_addresses(self.addresses), base64.b64decode("".join(krl.split()), validate=True))
            except (CAError, ValueError, OSError):
                pass  # a login does not fail for it
            return reply

        reply = self._run(work_and_krl, certificates=False)
        try:
            cert = asyncssh.import_certificate(reply["certificate"])
        except (KeyError, TypeError, ValueError, asyncssh.KeyImportError) as e:
            raise CAError(f"the CA's reply is not a certificate: {e}") from None
        common, parsed = _checked_reply(reply, key.public_data, now)
        notes = list(self.notes)
        role_name, ca_key, user = common["role"], parsed.signature_key, _key_id_user(common["key_id"])
        lifetime = int(common["valid_before"] - now())
        if use_agent:
            try:
                replaced = run_async(add_to_agent(use_agent, key, cert, common["key_id"], lifetime,
                                                  replaces=_replaced_by(role_name, user, ca_key)))
                notes += [f"removed the previous certificate {k} from ssh-agent" for k in replaced]
                return LoginResult(**common, where="agent", agent_socket=use_agent, notes=tuple(notes))
            except CAError as e:
                notes.append(f"{e}; wrote files instead")
        key_path, cert_path = write_files(out, key, reply["certificate"], common["key_id"], role_name)
        return LoginResult(**common, where="files", key_path=key_path, cert_path=cert_path, notes=tuple(notes))

    def _login_openssh(self, args: list[str], otp: str | None, agent_path: str, out: Path,
                       now: Callable[[], float]) -> LoginResult:
        """``login`` carried by the system's ssh (:mod:`ca.client.openssh`), into the agent at
        ``agent_path`` (into files in ``out`` if the agent refuses it, as the asyncssh way does);
        raises openssh.Fallback when the asyncssh path must do it (before anything was sent, or
        after the CA refused the key on a terminal)."""
        from ca.client import openssh
        from ca.client.agentwire import Agent
        from ca.client.results import held_certificate

        plain = self.sso is None and self.workload_token is None and self.enrol_code is None
        if not (plain and len(self.addresses) == 1 and self.pin and self.identity is not None):
            raise openssh.Fallback
        host_key = openssh.cached_host_key(self.address, self.pin)
        identity = self.identity.absolute()
        if host_key is None or not openssh.safe_path(identity) or not openssh.plain_openssh_key(identity):
            raise openssh.Fallback
        try:
            agent = Agent(agent_path)
        except CAError:
            raise openssh.Fallback from None  # the asyncssh path says so, and writes files instead
        with agent:
            try:
                tmp = openssh.temp_dir()
            except OSError:
                raise openssh.Fallback from None
            try:
                if not openssh.safe_path(tmp):
                    raise openssh.Fallback
                known = tmp / "known_hosts"
                known.write_text(f"iast-ca-service {host_key[0]} {host_key[1]}\n")
                key = openssh.new_key(tmp)

                def ssh(command: list[str]) -> list[str]:
                    return openssh.ssh_argv(host=self.host, port=self.port, user=self.user, identity=identity,
                                            known_hosts=known, kind=host_key[0], timeout=self.timeout,
                                            command=shlex.join(command))

                # The KRL for 'status' (which marks what it revokes), on a second connection at the same
                # time, when the one kept is older than KRL_MAX_AGE ('status --refresh' fetches it always).
                krl_address = format_addresses(self.addresses)
                krl = None
                if krl_age(krl_address) > KRL_MAX_AGE:
                    krl = subprocess.Popen(ssh(["krl"]), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                           stderr=subprocess.DEVNULL)
                try:
                    reply = self._openssh_sign(ssh, args, otp, key.public_line + "\n")
                finally:
                    if krl is not None:
                        try:
                            krl_out, _ = krl.communicate(timeout=self.timeout)
                            if krl.returncode == 0:
                                save_krl(krl_address, base64.b64decode(b"".join(krl_out.split()), validate=True))
                        except (subprocess.TimeoutExpired, ValueError, OSError):
                            krl.kill()
                            krl.wait()
            finally:
                openssh.remove_dir(tmp)
            common, parsed = _checked_reply(reply, key.public_blob, now)
            notes = list(self.notes)
            role_name, ca_key, user = common["role"], parsed.signature_key, _key_id_user(common["key_id"])
            cert_blob = parsed.blob
            lifetime = int(common["valid_before"] - now())
            replaces = _replaced_by(role_name, user, ca_key)
            try:
                old = []
                for blob, comment in agent.identities():
                    h = held_certificate("agent", blob, comment) if b"-cert-v01@openssh.com" in blob[:64] else None
                    if h is not None and replaces(h) and h.blob != cert_blob:
                        old.append(h)
                agent.add_ed25519_certificate(cert_blob, key.public, key.secret, common["key_id"], lifetime)
                notes += [f"removed the previous certificate {h.key_id} from ssh-agent"
                          for h in old if agent.remove(h.blob)]
                return LoginResult(**common, where="agent", agent_socket=agent_path, notes=tuple(notes))
            except CAError as e:
                notes.append(f"{e}; wrote files instead")
        import asyncssh

        key_path, cert_path = write_files(out, asyncssh.import_private_key(key.private_text), reply["certificate"],
                                          common["key_id"], role_name)
        return LoginResult(**common, where="files", key_path=key_path, cert_path=cert_path, notes=tuple(notes))

    def _openssh_sign(self, ssh, args: list[str], otp: str | None, public_line: str) -> dict[str, Any]:
        """Run ``sign`` over ssh; with a role that needs a second factor, ask for the code and run it
        once more (the asyncssh path asks on the same connection)."""
        from ca.client import openssh

        def once(extra: list[str]) -> dict[str, Any]:
            try:
                r = subprocess.run(ssh(args + extra), input=public_line, capture_output=True, text=True,
                                   timeout=max(120.0, self.timeout))
            except subprocess.TimeoutExpired:
                raise CAError(f"cannot reach the CA at {self.address}: timed out") from None
            except OSError:
                raise openssh.Fallback from None  # no ssh here
            if r.returncode == 255:  # ssh_failure raises openssh.Fallback where the asyncssh path should look
                raise openssh.ssh_failure(self.address, self.host, r.stderr, can_log_in=self.prompter.can_log_in)
            self._remember_pin()  # authenticated: as the asyncssh path does once connected
            if r.returncode != 0:
                raise _reply_error(r.returncode, r.stdout, r.stderr)
            return openssh.reply_json(r.stdout)

        try:
            return once(["--otp", otp] if otp else [])
        except MFARequired:
            if otp or self.prompter.code is None:
                raise
        code = self.prompter.code("One-time code: ")
        return once(["--otp", code.strip()])


def _replaced_by(role: str, user: str, ca_key: bytes) -> Callable[[Any], bool]:
    """Which held certificates a new login's certificate replaces: the previous one of this CA (key),
    user and role (one certificate per CA and role in the agent)."""
    return lambda h: h.role == role and h.user == user and h.ca_key == ca_key


def _checked_reply(reply: dict[str, Any], public_blob: bytes, now: Callable[[], float]):
    """The fields of the CA's sign reply for LoginResult, and the parsed certificate, after checking that
    the CA certified *our* key, as the user certificate it says it issued, still valid."""
    from ca.sshcert.certificates import USER_CERT, parse_certificate_line

    try:
        parsed = parse_certificate_line(reply["certificate"])
    except (KeyError, TypeError, ValueError) as e:
        raise CAError(f"the CA's reply is not a certificate: {e}") from None
    if parsed.public_key_blob != public_blob:
        raise CAError("the CA returned a certificate for another key")
    if (parsed.cert_type != USER_CERT or parsed.key_id != reply.get("key_id")
            or parsed.serial != reply.get("serial") or parsed.valid_before != reply.get("valid_before")
            or list(parsed.principals) != reply.get("principals")):
        raise CAError("the CA's reply does not match the certificate it sent")
    common = dict(
        key_id=reply["key_id"], serial=int(reply["serial"]), role=reply["role"],
        principals=tuple(reply["principals"]), valid_after=int(reply["valid_after"]),
        valid_before=int(reply["valid_before"]), force_command=reply.get("force_command"),
        source_address=tuple(reply.get("source_address") or ()),
        extensions=tuple(reply.get("extensions") or ()), ca_fingerprint=reply.get("ca_fingerprint", ""),
        certificate=reply["certificate"],
    )
    if int(common["valid_before"] - now()) <= 0:
        raise CAError("the certificate the CA returned has already expired (is this clock right?)")
    return common, parsed


def _is_public_key(path: Path) -> bool:
    import asyncssh

    try:
        asyncssh.read_public_key(path)
        return True
    except (OSError, asyncssh.KeyImportError, ValueError):
        return False


def _local_user() -> str:
    import getpass

    return getpass.getuser()


def _key_id_user(key_id: str) -> str | None:
    parts = key_id.split(":")
    return parts[1] if len(parts) == 4 else None


def sign_in_url(instructions: str) -> str | None:
    """The URL to open from the CA's SSO instructions: the complete one (``or open URL``), else the
    verification URL."""
    import re

    urls = re.findall(r"https://\S+", instructions)
    return urls[-1] if urls else None


def read_token(*, file: str | os.PathLike | None = None, env: str | None = None) -> str:
    """A workload's token from a file (``--token-file``) or an environment variable (``--token-env``):
    one line, at most 16 KiB (UsageError otherwise)."""
    if (file is None) == (env is None):
        raise UsageError("give one of --token-file FILE and --token-env VAR")
    if file is not None:
        try:
            text = Path(file).read_text(encoding="utf-8", errors="strict")
        except (OSError, UnicodeError) as e:
            raise UsageError(f"--token-file: cannot read {file}: {getattr(e, 'strerror', None) or e}") from None
        where = f"--token-file {file}"
    else:
        text = os.environ.get(env or "", "")
        where = f"--token-env {env}"
        if not text:
            raise UsageError(f"{where}: the variable is not set or empty")
    token = text.strip()
    if not token or "\n" in token or len(token) > 16 * 1024 or not token.isprintable():
        raise UsageError(f"{where}: expected one line with a token (a JWT) of at most 16 KiB")
    return token
class _Unreachable(Exception):
    """One CA address did not answer (refused, timed out, reset): the next one is tried."""

    def __init__(self, error: CAError):
        super().__init__(error.message)
        self.error = error


def _seconds(ttl: str | int) -> int:
    from ca.durations import parse_duration

    try:
        return ttl if isinstance(ttl, int) else parse_duration(str(ttl))
    except ValueError as e:
        raise UsageError(f"--ttl: {e}") from None
