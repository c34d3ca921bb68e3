"""Regression tests: every crash, hang or limit breach found by fuzzing or the malformed suite.

Each test names the input that broke maildissect and checks the fixed
behaviour. The crashers the atheris targets saved are also kept as files
under fuzz/regressions/<target>/ and replayed through the same harness
(fuzz/harness.py) at the end of this module.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from fuzz import harness
from maildissect.capture.files import CaptureReader
from tests.malformed.packets import pcapng_block, pcapng_idb, pcapng_shb

REGRESSIONS = Path(harness.__file__).resolve().parent / "regressions"


def read(data: bytes):
    reader = CaptureReader.from_stream(io.BytesIO(data), "test")
    return list(reader), [a.name for a in reader.anomalies]


@pytest.mark.parametrize("block", [pcapng_block(2, b"\0" * 4), pcapng_block(3, b""), pcapng_block(1, b"")],
                         ids=["packet-block", "simple-packet-block", "interface-block"])
def test_pcapng_block_shorter_than_its_fixed_fields(block):
    """A short obsolete Packet Block at the end of a file raised struct.error out of the reader;
    short Simple Packet and Interface Description blocks read the block trailer as fields."""
    frames, anomalies = read(pcapng_shb() + pcapng_idb() + block)
    assert frames == [] and anomalies == ["capture_bad_block"]


def _replay_cases():
    if not REGRESSIONS.is_dir():
        return []
    return sorted((p.parent.name, p) for p in REGRESSIONS.glob("*/*") if p.is_file())


@pytest.mark.parametrize("target,path", _replay_cases(), ids=lambda v: v.name if isinstance(v, Path) else v)
def test_saved_crashers(target, path):
    """Every input a fuzz target once failed on runs clean through that target now."""
    harness.TARGETS[target](path.read_bytes())
