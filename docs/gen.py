#!/usr/bin/env python3
"""Regenerate the reference pages that come from the code.

    python docs/gen.py          # rewrite docs/data.md, limits.md, anomalies.md, cli.md
    python docs/gen.py --check  # exit 1 if any of them is out of date (the test suite runs this)
"""

from __future__ import annotations

import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def cli_markdown() -> str:
    import click

    from maildissect.cli import cli
    lines = ["# Command line", "",
             "Generated from `maildissect --help` and each command's help (`python docs/gen.py`).", "",
             "Exit status: 0 on success (anomalies in the input do not change it), 1 for an input that "
             "cannot be read (a file that is not a capture, a missing file) or an environment problem "
             "(no capture permission), 2 for a usage error. Errors are one line on stderr, prefixed "
             "`maildissect: error:`; warnings (a truncated capture...) are prefixed `maildissect: warning:` "
             "and silenced by `--quiet`.", ""]
    ctx = click.Context(cli, info_name="maildissect", terminal_width=100, max_content_width=100)
    lines += ["## maildissect", "", "```", cli.get_help(ctx), "```", ""]
    for name in sorted(cli.commands):
        cmd = cli.commands[name]
        sub = click.Context(cmd, info_name=f"maildissect {name}", parent=None, terminal_width=100,
                            max_content_width=100)
        lines += [f"## maildissect {name}", "", "```", cmd.get_help(sub), "```", ""]
    return "\n".join(lines)


def pages() -> dict[str, str]:
    from maildissect import anomalies, frames
    from maildissect.config import limits_markdown
    return {
        "data.md": frames.markdown(),
        "limits.md": limits_markdown(),
        "anomalies.md": anomalies.markdown(),
        "cli.md": cli_markdown(),
    }


def main() -> int:
    check = "--check" in sys.argv
    stale = []
    for name, text in pages().items():
        path = HERE / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print("out of date (run python docs/gen.py): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
