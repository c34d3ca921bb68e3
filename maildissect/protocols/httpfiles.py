"""Which HTTP bodies are files, and the file records of an exchange.

Zeek's file analysis treats every HTTP body as a file; a mail analyst wants the files
people move, not every page and script of a web application. A body is a file when
it carries a file name or the sender says it is one, or when it is not a page, data
or code:

- a response with a Content-Disposition (``attachment``, or any with a file name);
- any other response body that is not HTML, JSON, JavaScript or CSS (an image, a PDF,
  an archive, plain text, a message, an octet stream, a body of no declared type);
- a request body with a file name: its Content-Disposition, an ``X-File-Name`` header, or
  a PUT, which names the file by its URL (``curl -T``);
- each part of a multipart/form-data request that has a file name (``curl -F``, a
  browser's file input): those are :meth:`~maildissect.protocols.http.Exchange.files`.

Whether a body is a file is decided from its message head, before its first byte, so
that it is hashed (md5, sha1, sha256) as it streams by, whatever its size, and kept only
when extraction asks, up to ``limits.max_extract_size``.
"""

from __future__ import annotations

from ..model import Attachment
from ..text import percent_decode
from .forms import header_params

__all__ = ["NOT_FILE_TYPES", "is_file_type", "request_file_name", "body_is_file", "file_of", "exchange_files"]

#: Content types of pages, data and code: such a body is a file only when named.
NOT_FILE_TYPES = frozenset({
    "text/html", "application/xhtml+xml", "application/json", "text/json", "text/x-json", "application/jmap+json",
    "application/javascript", "text/javascript", "application/x-javascript", "application/ecmascript",
    "text/ecmascript", "text/css", "application/x-www-form-urlencoded", "multipart/form-data",
})

#: Request headers that name the file a body is (upload widgets, object stores).
_NAME_HEADERS = ("x-file-name", "x-filename")


def is_file_type(content_type: str) -> bool:
    """A body of this (lower-cased, parameter-less) type is a file by itself."""
    return content_type not in NOT_FILE_TYPES and not content_type.endswith("+json")


def request_file_name(msg, dparams: dict) -> str | None:
    """The file name a request gives its body (Content-Disposition, X-File-Name, or the last
    segment of a PUT's URL), or None when it gives none."""
    name = dparams.get("filename")
    if name:
        return name
    for header in _NAME_HEADERS:
        value = msg.headers.get(header)
        if value and value.strip():
            return value.strip()[:500]
    if msg.method == "PUT":
        path = msg.uri.split("?", 1)[0].split("#", 1)[0]
        if "://" in path[:10]:
            path = path.split("://", 1)[1].partition("/")[2]
        last = path.rstrip("/").rsplit("/", 1)[-1]
        if last:
            text, _ = percent_decode(last.encode("utf-8", "surrogateescape"))
            return text[:500] or None
    return None


def body_is_file(msg, content_type: str, disposition: str, dparams: dict) -> bool:
    """Whether the body of ``msg`` (a request or a response head) is a file (see the module)."""
    if msg.is_request:
        if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
            return False  # a form: its file parts are files, the rest are fields
        if dparams.get("filename") or any(msg.headers.get(h) for h in _NAME_HEADERS):
            return True
        return msg.method == "PUT" and is_file_type(content_type)
    if disposition == "attachment" or dparams.get("filename"):
        return True
    return is_file_type(content_type)


def file_of(msg, body, name: str | None, keep_limit: int) -> Attachment | None:
    """The file record of a body that is a file (None for an empty body): the hashes of its
    decoded bytes and, when they were kept and fit ``keep_limit``, the bytes."""
    if body is None or not body.size:
        return None
    usable = body.usable
    data = None
    if body.data is not None and usable and body.size <= keep_limit:
        data = bytes(body.data)
    return Attachment(
        filename=name, content_type=body.content_type or None, size=body.size, md5=body.md5 or "",
        sha1=body.sha1 or "", sha256=body.sha256 or "", disposition=body.disposition,
        encoding=",".join(body.codings) or None, data=data, complete=usable and msg.complete)


def exchange_files(ex, keep_limit: int) -> tuple[list[Attachment], Attachment | None]:
    """The files of an exchange: ``(uploaded, downloaded)``, the form's file parts and a request
    body that is a file, and the response body when it is one. Their bytes are kept when they
    were and fit ``keep_limit`` (-1: never)."""
    req, resp = ex.request, ex.response
    rb = req.body if req is not None else None
    sb = resp.body if resp is not None else None
    files = []
    for part in ex.files():
        files.append(Attachment(
            filename=part.filename, content_type=part.content_type, size=part.size,
            md5=part.md5, sha1=part.sha1, sha256=part.sha256, disposition=part.disposition,
            part=str(part.index + 1), encoding=part.encoding, content_id=part.content_id,
            data=bytes(part.data) if part.data is not None and not part.truncated
            and part.size <= keep_limit else None,
            complete=part.complete and (rb is None or rb.usable)))
    if rb is not None and rb.multipart is None:
        _, dparams = header_params(req.headers.get("content-disposition"))
        if body_is_file(req, rb.content_type, rb.disposition or "", dparams):
            upload = file_of(req, rb, request_file_name(req, dparams), keep_limit)
            if upload is not None:
                files.append(upload)
    download = None
    if sb is not None and body_is_file(resp, sb.content_type, sb.disposition or "",
                                       {"filename": sb.filename} if sb.filename else {}):
        download = file_of(resp, sb, sb.filename, keep_limit)
    return files, download
