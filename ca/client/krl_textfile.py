"""The host KRL refresher's metrics, for the node exporter's textfile collector.

``iast-ssh host fetch-krl --textfile-dir DIR`` writes ``DIR/iast_krl.prom``
after every run, successful or not (docs/security.md rule 92), from what is
installed on disk, so a host whose refresh keeps failing shows a growing age
rather than a stale "all fine":

    iast_krl_age_seconds                       seconds since the installed KRL was last confirmed
                                               current by the CA (its last successful refresh)
    iast_krl_last_success_timestamp_seconds    when that was (the file's mtime: every success rewrites it)
    iast_krl_last_refresh_timestamp_seconds    when this run ended
    iast_krl_refresh_success                   1 if this run installed the CA's KRL, else 0
    iast_krl_version                           the installed KRL's version (as the CA's iast_krl_version)
    iast_krl_generated_timestamp_seconds       when the CA built it

The age is as of the run: if the timer itself stops, the file stops
changing, which the node exporter reports as ``node_textfile_mtime_seconds``;
alert on ``time() - iast_krl_last_success_timestamp_seconds`` to cover both
(README "Monitoring"). No label: nothing here is chosen by a client.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

FILENAME = "iast_krl.prom"

_HELP = {
    "iast_krl_age_seconds": "Seconds since the installed KRL was last confirmed current by the CA, as of the last run.",
    "iast_krl_last_success_timestamp_seconds": "Unix time of the last successful KRL refresh.",
    "iast_krl_last_refresh_timestamp_seconds": "Unix time the last KRL refresh ran.",
    "iast_krl_refresh_success": "Whether the last KRL refresh installed the CA's KRL (1) or failed (0).",
    "iast_krl_version": "Version of the installed KRL.",
    "iast_krl_generated_timestamp_seconds": "Unix time the CA generated the installed KRL.",
}


def render(krl_path: str | os.PathLike, ok: bool, now: float | None = None) -> str:
    """The text exposition for the KRL installed at ``krl_path`` after a run that ``ok``."""
    from ca.sshcert.krl import KRLError, parse_krl

    now = time.time() if now is None else now
    values: dict[str, float] = {"iast_krl_last_refresh_timestamp_seconds": now, "iast_krl_refresh_success": int(ok)}
    path = Path(krl_path)
    try:
        mtime = path.stat().st_mtime
        krl = parse_krl(path.read_bytes())
    except (OSError, KRLError):
        pass  # nothing usable installed: no age to report, and success 0 says why it matters
    else:
        values["iast_krl_age_seconds"] = max(0.0, now - mtime)
        values["iast_krl_last_success_timestamp_seconds"] = mtime
        values["iast_krl_version"] = krl.version
        values["iast_krl_generated_timestamp_seconds"] = krl.generated
    lines = []
    for name, help_text in _HELP.items():
        if name in values:
            v = values[name]
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge",
                      f"{name} {int(v) if float(v).is_integer() else round(v, 3)}"]
    return "\n".join(lines) + "\n"


def write(directory: str | os.PathLike, krl_path: str | os.PathLike, ok: bool, now: float | None = None) -> Path:
    """Write ``DIRECTORY/iast_krl.prom`` atomically (the collector reads only ``*.prom``, and the
    temp file beside it ends in ``.tmp``), mode 0644: the node exporter runs as another user."""
    from ca.client.files import write_installed

    target = Path(directory) / FILENAME
    write_installed(target, render(krl_path, ok, now), 0o644)
    return target
