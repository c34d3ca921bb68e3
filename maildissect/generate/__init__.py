"""Traffic generator: real mail clients and servers on loopback, recorded with ground truth.

``generate("journey", "out/journey.pcap")`` runs a scenario -- aiosmtpd,
Twisted IMAP4/POP3 and a Starlette webmail (uvicorn; hypercorn with HTTP/2 on
HTTPS) serving two mail domains, driven by smtplib, imaplib, poplib and httpx -- records the traffic as a pcap (live on
``lo``, or synthesised from recording relays) and writes a manifest
(``out/journey.json``) that states exactly what was exchanged. The manifest is
returned as a dict. ``generate_command`` is the ready-made ``maildissect
generate`` click command. docs/generator.md describes scenarios, options and
the manifest format.
"""

from __future__ import annotations

import os
import platform
import threading
import time

import click

SCENARIO_NAMES = ("smtp", "relay", "imap", "pop3", "webmail", "tls", "journey", "all")
CAPTURE_MODES = ("auto", "live", "synthetic")
DEFAULT_ATTACHMENT_SIZE = 4096
DEFAULT_MSS = 1460

__all__ = ["generate", "generate_command", "SCENARIO_NAMES", "CAPTURE_MODES", "output_paths"]


def output_paths(out: str) -> tuple[str, str]:
    """(pcap path, manifest path) for ``-o OUT``: OUT.pcap and OUT.json."""
    root, ext = os.path.splitext(out)
    if ext.lower() in (".pcap", ".cap"):
        return out, root + ".json"
    return out + ".pcap", out + ".json"


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {"python": platform.python_version()}
    for name in ("aiosmtpd", "twisted", "uvicorn", "hypercorn", "starlette", "httpx", "h2", "scapy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _choose_mode(capture: str, impaired: bool) -> tuple[str, str]:
    from .live import live_permitted
    if capture not in CAPTURE_MODES:
        raise ValueError(f"capture must be one of {', '.join(CAPTURE_MODES)}")
    ok, why = live_permitted()
    if capture == "live":
        if not ok:
            raise PermissionError(f"live capture not permitted: {why} (use --capture synthetic)")
        if impaired:
            raise ValueError("--loss/--reorder/--duplicate/--mss apply to synthetic captures only")
        return "live", f"requested ({why})"
    if capture == "synthetic":
        return "synthetic", "requested"
    if impaired:
        return "synthetic", "auto: impairments need a synthetic capture"
    if ok:
        return "live", f"auto: live capture permitted ({why})"
    return "synthetic", f"auto: live capture not permitted ({why})"


def generate(scenario: str, out: str, *, messages: int = 3,
             attachment_size: int = DEFAULT_ATTACHMENT_SIZE, seed: int = 1, users: int = 1,
             keylog: str | None = None, capture: str = "auto", loss: float = 0.0,
             reorder: float = 0.0, duplicate: float = 0.0, mss: int | None = None,
             progress=None, timeout: float = 180.0, retry_delay: float = 0.75) -> dict:
    """Run ``scenario`` and write ``OUT.pcap`` and ``OUT.json``; return the manifest.

    scenario: one of :data:`SCENARIO_NAMES`. out: output path (``.pcap`` added
    when missing; the manifest goes next to it with ``.json``). messages:
    messages per scenario step. attachment_size: bytes per attachment (0: no
    attachments). seed: same seed, same message contents. users: users per
    domain (1-6). keylog: write the TLS clients' NSS key log there. capture:
    "live" (tcpdump/scapy on lo; root or CAP_NET_RAW), "synthetic" (recording
    relays, pcap synthesised with scapy; no privileges) or "auto". loss,
    reorder, duplicate: per-segment probabilities, mss: segment size
    (synthetic only). progress: called with one-line status messages.
    timeout: the whole run is stopped after this many seconds. retry_delay:
    seconds a relay queue waits before retrying a deferred message.
    """
    from .impair import Impairments
    from .lab import Lab
    from .live import make_capture
    from .net import HOSTS
    from .scenarios import NEEDS_TLS, SCENARIOS

    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose from {', '.join(SCENARIO_NAMES)}")
    if messages < 1:
        raise ValueError("messages must be >= 1")
    say = progress or (lambda msg: None)
    impaired = bool(loss or reorder or duplicate or mss is not None)
    imp = Impairments(loss=loss, reorder=reorder, duplicate=duplicate,
                      mss=mss if mss is not None else DEFAULT_MSS, seed=seed)
    mode, reason = _choose_mode(capture, impaired)
    pcap_path, manifest_path = output_paths(out)
    os.makedirs(os.path.dirname(os.path.abspath(pcap_path)), exist_ok=True)
    say(f"capture: {mode} ({reason})")

    t0 = time.time()
    capturer = None
    cap_stats: dict = {}
    lab = Lab(synthetic=(mode == "synthetic"), seed=seed, users=users,
              attachment_size=attachment_size, keylog=keylog, tls=scenario in NEEDS_TLS,
              retry_delay=retry_delay, progress=say)
    try:
        with lab:
            if mode == "live":
                # Started once the services listen, so that the filter can name
                # their exact addresses and ports.
                capturer = make_capture(pcap_path, [(d["ip"], d["listen_port"])
                                                    for d in lab.service_descriptions])
                capturer.start()
            say(f"servers up; running scenario {scenario!r}")
            _run_bounded(SCENARIOS[scenario], lab, messages, timeout, lab.close)
            time.sleep(0.1)  # last FIN/ACK exchanges reach the relays and the capture
            if capturer is not None:
                cap_stats = capturer.stop()
    finally:
        if capturer is not None:
            capturer.stop()
    elapsed_scenario = time.time() - t0

    doc_capture = {"mode": mode, "requested": capture, "reason": reason,
                   "pcap": os.path.basename(pcap_path), "linktype": "ethernet"}
    if mode == "synthetic":
        from .record import synthesize
        stats = synthesize(lab.recorder.connections, pcap_path, imp, seed=seed)
        doc_capture.update(tool="recording relays; pcap synthesised (scapy writer)", **stats)
        for s in lab.manifest.sessions:
            conn = lab.recorder.find(s.client_ip, s.client_port)
            if conn is not None:
                s.recorded = {"recorded": dict(conn.summary(), connection=conn.index)}
    else:
        doc_capture.update(tool=capturer.tool, filter=capturer.filter, **cap_stats)
    say(f"pcap written: {pcap_path}")

    m = lab.manifest
    relay = []
    for mta in lab.mtas.values():
        for e in mta.queue.entries():
            from .manifest import iso, sha256
            relay.append({
                "queue_id": e["queue_id"], "server": e["server"], "domain": e["domain"],
                "message_id": e["message_id"], "mail_from": e["mail_from"],
                "size": len(e["data"]), "sha256": sha256(e["data"]),
                "queued": iso(e["queued"]), "status": e["status"],
                "attempts": [dict(a, ts=iso(a["ts"]), end=iso(a["end"])) for a in e["attempts"]]})
    relay.sort(key=lambda r: r["queued"] or "")
    m.relay = relay
    m.info = {
        "scenario": scenario,
        "created": _iso_now(),
        "seed": seed,
        "options": {"messages": messages, "attachment_size": attachment_size, "users": users,
                    "keylog": os.path.abspath(keylog) if keylog else None,
                    "retry_delay": retry_delay},
        "capture": doc_capture,
        "impairments": imp.to_dict() if mode == "synthetic" else None,
        "duration": round(elapsed_scenario, 3),
        "hosts": [{"name": h.name, "ip": h.ip, "role": h.role} for h in HOSTS],
        "services": lab.service_descriptions,
        "users": [{"address": u.address, "user": u.user, "password": u.password, "name": u.display}
                  for u in lab.alice_users + lab.bob_users],
        "server_errors": lab.server_errors,
        "software": _versions(),
    }
    doc = m.write(manifest_path)
    say(f"manifest written: {manifest_path}")
    return doc


def _iso_now() -> str:
    from .manifest import iso
    return iso(time.time())


def _run_bounded(fn, lab, messages, timeout, on_timeout):
    """Run the scenario in a worker thread; past ``timeout`` stop the lab (which
    makes every blocked client fail) and raise TimeoutError."""
    box: dict = {}

    def run():
        try:
            fn(lab, messages)
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    worker = threading.Thread(target=run, name="maildissect-scenario", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        on_timeout()
        worker.join(15)
        raise TimeoutError(f"scenario did not finish within {timeout:.0f}s")
    if "error" in box:
        raise box["error"]


# --------------------------------------------------------------------------
# click command


def _size(value) -> int:
    if isinstance(value, int):
        return value
    text = str(value).strip().lower()
    mult = 1
    for suffix, m in (("kib", 1024), ("mib", 1024 ** 2), ("kb", 1000), ("mb", 1000 ** 2),
                      ("k", 1024), ("m", 1024 ** 2), ("b", 1)):
        if text.endswith(suffix):
            text, mult = text[:-len(suffix)], m
            break
    try:
        n = int(float(text) * mult)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a size (e.g. 4096, 4k, 1M)")
    if n < 0:
        raise click.BadParameter("size must be >= 0")
    return n


class _SizeType(click.ParamType):
    name = "SIZE"

    def convert(self, value, param, ctx):
        try:
            return _size(value)
        except click.BadParameter as e:
            self.fail(str(e), param, ctx)


_HELP = """Generate a lab capture: real mail clients and servers on loopback.

\b
SCENARIO is one of:
  smtp     Alice submits messages on 587 with AUTH; her server relays them
  relay    the queue: Bob's MX refuses, then greylists (451), then accepts
  imap     Bob's IMAP session: LIST, SELECT, SEARCH, FETCH, APPEND, IDLE...
  pop3     Alice's POP3 session: USER/PASS, STAT, LIST, UIDL, TOP, RETR, DELE
  webmail  Bob's browser (login, read, download, compose, upload) and JMAP
  tls      STARTTLS on 587/143, implicit TLS on 465/993/995, webmail over HTTPS in HTTP/2
  journey  the whole story: submit, queue and retry, IMAP, webmail reply, POP3
  all      all of the above in one capture

\b
Hosts: Alice's UA 127.0.0.10, mail.alice.example 127.0.0.20,
mail.bob.example 127.0.0.30, Bob's UA 127.0.0.40; standard ports.

Writes OUT.pcap and OUT.json (the manifest: hosts, sessions, credentials,
every message with its hashes, relay attempts). Live capture needs root or
CAP_NET_RAW; synthetic capture needs no privileges and records the standard
ports whatever ports were really used.
"""


@click.command("generate", help=_HELP)
@click.argument("scenario", type=click.Choice(SCENARIO_NAMES), default="journey", metavar="[SCENARIO]")
@click.option("-o", "--out", "out", default=None, metavar="OUT",
              help="Output pcap path; the manifest is written next to it as .json "
                   "[default: ./SCENARIO.pcap].")
@click.option("-n", "--messages", default=3, show_default=True, type=click.IntRange(1, 200),
              help="Messages per scenario step.")
@click.option("--attachment-size", default=str(DEFAULT_ATTACHMENT_SIZE), show_default=True,
              type=_SizeType(), help="Bytes per attachment (4096, 64k, 1M; 0 for none).")
@click.option("--seed", default=1, show_default=True, type=int,
              help="Seed for contents: the same seed gives the same messages and passwords.")
@click.option("--users", default=1, show_default=True, type=click.IntRange(1, 6),
              help="Users per mail domain.")
@click.option("--keylog", type=click.Path(dir_okay=False), default=None,
              help="Write the TLS key log (NSS format) here, to decrypt the capture.")
@click.option("--capture", type=click.Choice(CAPTURE_MODES), default="auto", show_default=True,
              help="live: sniff lo (root); synthetic: recording relays + scapy; auto: live when permitted.")
@click.option("--loss", default=0.0, show_default=True, type=click.FloatRange(0, 0.5),
              help="Synthetic: probability that a data segment is lost and retransmitted later.")
@click.option("--reorder", default=0.0, show_default=True, type=click.FloatRange(0, 0.5),
              help="Synthetic: probability that a data segment swaps places with the next.")
@click.option("--duplicate", default=0.0, show_default=True, type=click.FloatRange(0, 0.5),
              help="Synthetic: probability that a data segment arrives twice.")
@click.option("--mss", default=None, type=click.IntRange(64, 65495),
              help=f"Synthetic: maximum segment size [default: {DEFAULT_MSS}].")
@click.option("-q", "--quiet", is_flag=True, help="Print only the output paths.")
def generate_command(scenario, out, messages, attachment_size, seed, users, keylog, capture,
                     loss, reorder, duplicate, mss, quiet):
    """Click entry point; see the help text above."""
    out = out or f"{scenario}.pcap"
    say = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    t0 = time.time()
    try:
        doc = generate(scenario, out, messages=messages, attachment_size=attachment_size,
                       seed=seed, users=users, keylog=keylog, capture=capture, loss=loss,
                       reorder=reorder, duplicate=duplicate, mss=mss, progress=say)
    except (ValueError, PermissionError, TimeoutError) as e:
        raise click.ClickException(str(e))
    pcap, manifest = output_paths(out)
    if quiet:
        click.echo(pcap)
        click.echo(manifest)
        return
    cap = doc["capture"]
    sessions = doc["sessions"]
    click.echo(f"{scenario}: {cap['mode']} capture, {cap.get('packets', cap.get('captured', '?'))} packets, "
               f"{len(sessions)} TCP sessions, {len(doc['messages'])} message transfers "
               f"in {time.time() - t0:.1f}s")
    for r in doc["relay"]:
        steps = ", ".join(f"#{a['attempt']} {a['outcome']}" for a in r["attempts"])
        click.echo(f"  queue {r['server']} {r['queue_id']} {r['message_id']} -> {r['domain']}: {steps}")
    if doc["server_errors"]:
        click.echo(f"  server errors: {len(doc['server_errors'])} (see manifest)", err=True)
    click.echo(f"  {pcap}\n  {manifest}")
