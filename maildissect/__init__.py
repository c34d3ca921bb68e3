"""maildissect: what mail went over this wire?

Reads pcap/pcapng captures (or live traffic), reassembles TCP streams and
parses SMTP, IMAP, POP3 and HTTP webmail into sessions, commands, messages,
attachments and credentials.

    >>> import maildissect
    >>> a = maildissect.analyze("captures/journey.pcap")
    >>> a.messages[["protocol", "direction", "from", "subject"]]
"""

import os as _os

# Tables are built and written one after another; Arrow's default allocator
# (mimalloc) keeps what each one freed, the system allocator reuses it: 30 MB
# less at the peak of an export of the 285 MB benchmark capture, no slower.
# (Read when pyarrow is first used; an explicit choice in the environment wins.)
_os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

from .analysis import Analysis, analyze, read_flows  # noqa: E402
from .capture.files import CaptureError  # noqa: E402
from .config import Config, Limits  # noqa: E402

__version__ = "0.1.0"

__all__ = ["Analysis", "analyze", "read_flows", "CaptureError", "Config", "Limits", "__version__"]
