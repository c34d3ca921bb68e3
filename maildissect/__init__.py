"""maildissect: what mail went over this wire?

Reads pcap/pcapng captures (or live traffic), reassembles TCP streams and
parses SMTP, IMAP, POP3 and HTTP webmail into sessions, commands, messages,
attachments and credentials.

    >>> import maildissect
    >>> a = maildissect.analyze("captures/journey.pcap")
    >>> a.messages[["protocol", "direction", "from", "subject"]]
"""

from .analysis import Analysis, analyze, read_flows
from .capture.files import CaptureError
from .config import Config, Limits

__version__ = "0.1.0"

__all__ = ["Analysis", "analyze", "read_flows", "CaptureError", "Config", "Limits", "__version__"]
