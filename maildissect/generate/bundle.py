"""Make the lab captures shipped in the repository's ``captures/`` folder.

    python -m maildissect.generate.bundle            # writes captures/*.pcap + *.json
    python -m maildissect.generate.bundle -o DIR     # somewhere else

Every capture is synthetic (no privileges needed, same contents for the same
seed) and small: one or two messages per step, 512-byte attachments. ``tls.keys`` is the
TLS key log that decrypts ``tls.pcap``. captures/README.md describes each file.
"""

from __future__ import annotations

import json
import os

import click

from . import generate, output_paths

#: (file name, scenario, extra options); journey first: the README analyses it.
BUNDLE = (
    ("journey", "journey", {"messages": 2}),
    ("smtp", "smtp", {"messages": 2}),
    ("relay", "relay", {}),
    ("imap", "imap", {}),
    ("pop3", "pop3", {}),
    ("webmail", "webmail", {}),
    ("tls", "tls", {"keylog": "tls.keys"}),
    ("journey-impaired", "journey", {"loss": 0.03, "reorder": 0.03, "duplicate": 0.03, "mss": 536}),
)
COMMON = dict(messages=1, attachment_size=512, seed=1, capture="synthetic")


def make_bundle(directory: str, progress=None) -> list[tuple[str, int]]:
    """Generate every bundled capture into ``directory``; return (file, size) pairs."""
    os.makedirs(directory, exist_ok=True)
    written = []
    for name, scenario, extra in BUNDLE:
        opts = dict(COMMON, **extra)
        if "keylog" in opts:
            opts["keylog"] = os.path.join(directory, opts["keylog"])
        pcap = os.path.join(directory, name + ".pcap")
        generate(scenario, pcap, **opts)
        pcap, manifest = output_paths(pcap)
        if "keylog" in opts:
            # The manifest names the key log next to it, not where it was made.
            with open(manifest, encoding="utf-8") as f:
                doc = json.load(f)
            doc["options"]["keylog"] = os.path.basename(opts["keylog"])
            with open(manifest, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=1, ensure_ascii=False)
                f.write("\n")
            written.append((opts["keylog"], os.path.getsize(opts["keylog"])))
        for path in (pcap, manifest):
            written.append((path, os.path.getsize(path)))
        if progress:
            progress(f"{name}: {os.path.getsize(pcap)} + {os.path.getsize(manifest)} bytes")
    return written


@click.command("bundle")
@click.option("-o", "--out", "directory", default="captures", show_default=True,
              help="Folder for the captures and manifests.")
def main(directory):
    """Regenerate the bundled lab captures."""
    written = make_bundle(directory, progress=click.echo)
    click.echo(f"{len(written)} files, {sum(size for _, size in written)} bytes in {directory}")


if __name__ == "__main__":
    main()
