"""The generator's servers listen on loopback addresses only and give their ports back.

While a scenario runs (every service: SMTP, submission, IMAP, POP3, webmail
over HTTP and HTTPS, the relays), the test samples the sockets of its own
process: every listening or bound socket must be on 127.0.0.0/8 or ::1, and
when ``generate`` returns, the listening sockets and their ports are gone
(tests/test_generate.py checks the same after a failing and a timed-out
scenario).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time

import pytest

from maildissect.generate import generate

psutil = pytest.importorskip("psutil")  # (installed with dask[distributed], a test dependency)


def _inet_sockets():
    return [c for c in psutil.Process().net_connections(kind="inet")]


@pytest.mark.parametrize("scenario", ["journey", "webmail", "tls"])
def test_generator_listens_on_loopback_and_releases_ports(scenario, tmp_path):
    before = {(c.laddr.ip, c.laddr.port) for c in _inet_sockets() if c.status == psutil.CONN_LISTEN}
    seen: dict[tuple[str, int], str] = {}
    done = threading.Event()

    def sample():
        while not done.is_set():
            for c in _inet_sockets():
                if c.laddr:
                    seen.setdefault((c.laddr.ip, c.laddr.port), c.status)
            time.sleep(0.01)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        generate(scenario, str(tmp_path / f"{scenario}.pcap"), capture="synthetic", messages=1)
    finally:
        done.set()
        sampler.join(5)
    listening = {addr for addr, status in seen.items() if status == psutil.CONN_LISTEN} - before
    assert listening, "no listening socket was seen"
    outside = [addr for addr in seen if addr not in before and not ipaddress.ip_address(addr[0]).is_loopback]
    assert not outside, f"bound beyond loopback: {outside}"
    # every port the lab listened on is free again: nothing accepts, and it can be bound
    still = {(c.laddr.ip, c.laddr.port) for c in _inet_sockets() if c.status == psutil.CONN_LISTEN}
    assert not (still & listening), still & listening
    for ip, port in listening:
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        with socket.socket(family) as s:
            s.settimeout(1)
            assert s.connect_ex((ip, port)) != 0, f"{ip}:{port} still accepts connections"
