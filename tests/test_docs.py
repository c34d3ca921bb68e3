"""The reference docs are generated from the code and must not drift from it."""

import pathlib
import re
import subprocess
import sys

import maildissect.frames as frames
from maildissect import anomalies, model

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_generated_pages_are_up_to_date():
    res = subprocess.run([sys.executable, str(ROOT / "docs" / "gen.py"), "--check"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_anomaly_name_emitted_is_registered():
    """Every anomaly name that appears in the code is in the registry (and so in docs)."""
    known = set(anomalies.registry())
    code = "\n".join(p.read_text() for p in (ROOT / "maildissect").rglob("*.py"))
    used = set(re.findall(r'''anomaly\([^"')]*["']([a-z0-9]+_[a-z0-9_]+)["']''', code))
    used |= set(re.findall(r'''\bAnomaly\([^"')]*?["']([a-z0-9]+_[a-z0-9_]+)["']''', code))
    missing = sorted(n for n in used if n not in known)
    assert not missing, f"anomaly names without a documented meaning: {missing}"


def test_every_record_field_is_a_column_or_deliberately_not():
    tables = {"Flow": "flows", "Session": "sessions", "Command": "commands", "Message": "messages",
              "Credential": "credentials", "Anomaly": "anomalies", "HttpRequest": "http",
              "MailboxEvent": "mailboxes"}
    for cls_name, table in tables.items():
        cls = getattr(model, cls_name)
        columns = {spec[3] if len(spec) > 3 else spec[0] for spec in frames.SCHEMAS[table]}
        skipped = frames.NOT_COLUMNS.get(cls_name, set())
        fields = set(cls.__dataclass_fields__)
        missing = sorted(fields - columns - skipped)
        assert not missing, f"{cls_name} fields with no column in {table} (add them to frames.SCHEMAS): {missing}"


def test_readme_quick_start_and_ci_run_the_same_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -e '.[test]' && maildissect analyze captures/journey.pcap" in readme
    assert "python -m pytest -q" in readme and "python3 -m pytest -q" in ci
