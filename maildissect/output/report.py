"""The HTML report: one self-contained file with the whole story of a capture.

``write_report(analysis, "report.html")`` writes a page that needs nothing but
a browser -- no network, no CDN: plotly.js is inlined once, styles and the
small table-sorting script are inline too -- and that prints cleanly. It
holds, in order:

* an overview: figures and bar charts of protocols, messages and connections;
* the timeline: one lane per connection (its span as a bar), every event as a
  marker you can hover;
* each message's journey: the hosts it crossed drawn as lanes, each hop an
  arrow from sender to receiver at the time it happened, failed attempts in
  red, with the hop table and the Received-header cross-check under it;
* a ladder (sequence) diagram per session, as networking textbooks draw
  them: client and server lifelines, SYN, SYN-ACK and ACK, every command and
  reply, the message data, then FIN or RST;
* sortable, filterable tables of sessions, messages, attachments, files,
  credentials (secrets masked unless asked) and anomalies.

Charts are plotly figures (SVG). The size is bounded: at most ``max_ladders``
ladders, ``max_journeys`` journey drawings, ``max_lanes`` timeline lanes and
``max_rows`` table rows, each cut said on the page. The exact packet times of
SYN/SYN-ACK/ACK/FIN/RST come from a second light read of the captures
(:func:`maildissect.capture.control.flow_packets`); without it (stdin) they are
derived from the flows table's start, handshake RTT, end and close reason.
"""

from __future__ import annotations

import html
import math
from collections import Counter, defaultdict
from datetime import datetime, timezone

import pandas as pd

from .tables import cell

#: colours per protocol (timeline bars, overview)
PROTOCOL_COLORS = {"smtp": "#1f77b4", "smtps": "#1f77b4", "imap": "#2ca02c", "imaps": "#2ca02c",
                   "pop3": "#9467bd", "pop3s": "#9467bd", "http": "#ff7f0e", "https": "#ff7f0e",
                   "tls": "#7f7f7f", "": "#bcbd22"}
#: event categories drawn as marker traces on the timeline (legend entries)
EVENT_GROUPS = [
    ("connection", {"tcp_connect", "tcp_midstream", "tcp_close", "tcp_open", "tcp_timeout"}, "line-ns", "#555555"),
    ("refused / reset", {"tcp_refused", "tcp_unanswered", "tcp_reset"}, "x", "#d62728"),
    ("greeting, HELO, TLS", {"greeting", "helo", "tls_start", "tls_refused"}, "circle-open", "#17becf"),
    ("authentication", {"auth_success", "auth_failure", "auth_attempt"}, "star", "#e377c2"),
    ("envelope", {"mail_from", "rcpt_accepted", "rcpt_rejected", "data_rejected"}, "triangle-right", "#8c564b"),
    ("message", {"message_accepted", "message_deferred", "message_rejected", "message_unanswered",
                 "imap_fetch", "imap_append", "pop3_retr", "pop3_top"}, "diamond", "#000000"),
    ("mailbox", {"imap_select", "imap_store", "imap_copy", "imap_expunge", "pop3_dele"}, "square-open",
     "#2ca02c"),
    ("webmail", {"webmail"}, "hexagon", "#ff7f0e"),
    ("failed command", {"command_failed"}, "x-thin-open", "#d62728"),
    ("anomaly", {"anomaly"}, "triangle-up", "#d62728"),
]
ROLE_COLORS = {"submission": "#1f77b4", "relay": "#17becf", "delivery": "#2ca02c", "retrieval": "#9467bd",
               "append": "#8c564b", "webmail_send": "#ff7f0e", "upload": "#bcbd22", "transfer": "#7f7f7f"}
FAILED = {"refused", "unanswered", "deferred", "rejected", "aborted", "no_reply", "failed"}
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True,
                 "modeBarButtonsToRemove": ["select2d", "lasso2d", "autoScale2d"]}


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    try:
        return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
    except (OverflowError, OSError, ValueError):
        return None


def _human(ts: float | None) -> str:
    s = _iso(ts)
    return s[:-3] + " UTC" if s else "?"


def _esc(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _dur(seconds: float | None) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return ""
    a = abs(seconds)
    if a < 1e-3:
        return f"{seconds * 1e6:.0f} \u00b5s"
    if a < 1:
        return f"{seconds * 1e3:.1f} ms"
    if a < 120:
        return f"{seconds:.3f} s"
    if a < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def host_names(records) -> dict[str, str]:
    """Address -> the name the host gives itself (SMTP greeting, EHLO, Received headers)."""
    names: dict[str, str] = {}
    for s in records.sessions:
        if s.protocol == "smtp" and s.banner:
            word = s.banner.split()[0] if s.banner.split() else ""
            if "." in word:
                names.setdefault(s.server_ip, word)
    for s in records.sessions:
        if s.protocol == "smtp" and s.helo and "." in s.helo and not s.helo.startswith("["):
            names.setdefault(s.client_ip, s.helo)
    return names


# -- figures ----------------------------------------------------------------------------------------
# Figures are plain plotly figure dicts ({"data": [...], "layout": {...}}) rendered by plotly.js.
# Building them through plotly.graph_objects validates every property of every annotation
# (and re-validates the whole list on each addition); for reports with hundreds of arrows
# that cost seconds, so the dicts are written directly with plotly.js's documented keys.
_FONT = {"family": "system-ui, -apple-system, Segoe UI, sans-serif", "size": 12, "color": "#1d1d1f"}
_AXIS = {"gridcolor": "#ececec", "linecolor": "#bbb", "zerolinecolor": "#ddd", "automargin": True}


def _fig_html(fig: dict, div_id: str) -> str:
    import plotly.io as pio
    return pio.to_html(fig, full_html=False, include_plotlyjs=False, config=PLOTLY_CONFIG, div_id=div_id,
                       default_width="100%", validate=False)


def _layout(height: int, **kw) -> dict:
    layout = {"height": height, "margin": {"l": 10, "r": 10, "t": 30, "b": 30}, "font": _FONT,
              "paper_bgcolor": "#ffffff", "plot_bgcolor": "#ffffff", "hovermode": "closest",
              "hoverlabel": {"align": "left"}}
    layout.update(kw)
    return layout


def overview_figure(records) -> dict:
    """Bar charts: sessions per protocol, messages per direction, connections by how they ended."""
    protos = Counter(s.protocol for s in records.sessions)
    dirs = Counter(f"{m.protocol} {m.direction}" for m in records.messages if m.kind != "envelope")
    closes = Counter(f.close for f in records.flows)
    data = [
        {"type": "bar", "x": list(protos), "y": list(protos.values()), "xaxis": "x", "yaxis": "y",
         "marker": {"color": [PROTOCOL_COLORS.get(p, "#888") for p in protos]}, "showlegend": False,
         "hovertemplate": "%{x}: %{y} session(s)<extra></extra>"},
        {"type": "bar", "x": list(dirs), "y": list(dirs.values()), "xaxis": "x2", "yaxis": "y2",
         "marker": {"color": [PROTOCOL_COLORS.get(k.split()[0], "#888") for k in dirs]}, "showlegend": False,
         "hovertemplate": "%{x}: %{y} message(s)<extra></extra>"},
        {"type": "bar", "x": list(closes), "y": list(closes.values()), "xaxis": "x3", "yaxis": "y3",
         "marker": {"color": ["#d62728" if c in ("refused", "unanswered", "rst") else "#7f7f7f" for c in closes]},
         "showlegend": False, "hovertemplate": "%{x}: %{y} connection(s)<extra></extra>"},
    ]
    layout = _layout(270)
    titles = ("sessions per protocol", "messages per direction", "connections by ending")
    notes = []
    for i, (lo, hi) in enumerate(((0.0, 0.28), (0.36, 0.64), (0.72, 1.0)), start=1):
        sx = "" if i == 1 else str(i)
        layout[f"xaxis{sx}"] = dict(_AXIS, domain=[lo, hi], anchor=f"y{sx}", type="category")
        layout[f"yaxis{sx}"] = dict(_AXIS, anchor=f"x{sx}", rangemode="tozero", tickformat="d")
        notes.append({"text": f"<b>{titles[i - 1]}</b>", "x": (lo + hi) / 2, "y": 1.0, "xref": "paper",
                      "yref": "paper", "showarrow": False, "yanchor": "bottom"})
    layout["annotations"] = notes
    return {"data": data, "layout": layout}


def _lane(f, sessions) -> str:
    s = sessions.get(f.flow_id)
    proto = (s.protocol if s is not None else "") or f.protocol or "tcp"
    return f"#{f.flow_id} {proto} {f.client_ip} \u2192 {f.server_ip}:{f.server_port}"


def timeline_figure(records, events, max_lanes: int = 200) -> dict:
    """One lane per connection (bar from first to last packet) with every event as a marker."""
    flows = sorted(records.flows, key=lambda f: (f.start, f.flow_id))[:max_lanes]
    sessions = {s.session_id: s for s in records.sessions}
    lanes = {f.flow_id: _lane(f, sessions) for f in flows}
    data = []
    by_proto = defaultdict(list)
    for f in flows:
        by_proto[(sessions[f.flow_id].protocol if f.flow_id in sessions else f.protocol) or ""].append(f)
    for proto, fl in sorted(by_proto.items()):
        ok = [f for f in fl if f.close not in ("refused", "unanswered")]
        if not ok:
            continue
        # horizontal bars on a date axis: base is the start, x the length in milliseconds
        data.append({
            "type": "bar", "orientation": "h", "y": [lanes[f.flow_id] for f in ok],
            "x": [max((f.end - f.start) * 1000.0, 0.5) for f in ok], "base": [_iso(f.start) for f in ok],
            "name": f"{proto or 'other'} connection", "marker": {"color": PROTOCOL_COLORS.get(proto, "#888")},
            "opacity": 0.35, "hoverinfo": "text",
            "hovertext": [f"#{f.flow_id} {_human(f.start)} \u2192 {_human(f.end)} ({_dur(f.end - f.start)}), "
                          f"{f.packets} packets, {f.close}" for f in ok]})
    for name, kinds, symbol, color in EVENT_GROUPS:
        evs = [e for e in events if e.event in kinds and e.session_id in lanes and e.ts is not None]
        if not evs:
            continue
        data.append({
            "type": "scatter", "mode": "markers", "name": name, "x": [_iso(e.ts) for e in evs],
            "y": [lanes[e.session_id] for e in evs], "hoverinfo": "text",
            "marker": {"symbol": symbol, "size": 14 if symbol == "line-ns" else 10, "color": color,
                       "line": {"width": 1.5, "color": color}},
            "hovertext": [f"{_human(e.ts)}<br>#{e.session_id} {e.event}<br>{_esc(e.description)}"
                          + (f"<br>{_esc(e.message_id)}" if e.message_id else "") for e in evs]})
    order = [lanes[f.flow_id] for f in flows]
    layout = _layout(150 + 26 * max(1, len(order)), barmode="overlay",
                     legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "left", "x": 0},
                     margin={"l": 10, "r": 10, "t": 60, "b": 30})
    layout["yaxis"] = dict(_AXIS, type="category", categoryorder="array", categoryarray=order,
                           autorange="reversed")
    layout["xaxis"] = dict(_AXIS, type="date")
    return {"data": data, "layout": layout}


def journey_figure(journey, hops, names: dict) -> dict:
    """The hosts a message crossed as lanes; each hop an arrow at the time it happened."""
    wire = [h for h in hops if h.wire and h.start is not None]
    hosts: list[str] = []

    def ends(h):
        a, b = (h.server_ip, h.client_ip) if h.direction in ("retrieved", "downloaded") else (h.client_ip,
                                                                                            h.server_ip)
        return a or "?", b or "?"
    for h in wire:
        for x in ends(h):
            if x not in hosts:
                hosts.append(x)
    label = {x: (f"{x}<br><i>{_esc(names[x])}</i>" if x in names else x) for x in hosts}
    data, notes = [], []
    legend_seen = set()
    lane_count: dict[str, int] = {}
    for h in wire:
        src, dst = ends(h)
        failed = h.outcome in FAILED
        color = "#d62728" if failed else ROLE_COLORS.get(h.role, "#444")
        end = h.end if h.end is not None else h.start
        role_name = f"{h.role} (failed)" if failed else h.role
        text = (f"hop {h.hop}: {h.role}{f' #{h.attempt}' if h.attempt else ''} \u2014 {h.outcome}<br>"
                f"{h.protocol} {h.client_ip}:{h.client_port} \u2192 {h.server_ip}:{h.server_port} "
                f"(session {h.session_id})<br>{_human(h.start)}"
                + (f"<br>latency {_dur(h.latency)}" if h.latency is not None else "")
                + (f"<br>{_esc(h.reply)}" if h.reply else ""))
        data.append({
            "type": "scatter", "mode": "lines+markers", "x": [_iso(h.start), _iso(end)],
            "y": [label[src], label[dst]], "name": role_name, "legendgroup": role_name,
            "showlegend": role_name not in legend_seen, "hoverinfo": "text", "hovertext": [text, text],
            "line": {"color": color, "width": 3, "dash": "dash" if failed else "solid"},
            "marker": {"size": [6, 14], "symbol": ["circle", "x" if failed else "triangle-right"], "color": color}})
        legend_seen.add(role_name)
        numbered = h.attempt and (h.attempt > 1 or failed)  # attempt numbers only where there were retries
        tag = f"{h.role}{f' #{h.attempt}' if numbered else ''}"
        if failed:
            tag += f" {h.outcome}"
        if h.latency is not None and h.hop > 1:
            tag += f" (+{_dur(h.latency)})"
        # labels of hops ending on the same lane alternate above and below it
        k = lane_count[dst] = lane_count.get(dst, 0) + 1
        notes.append({"x": _iso(end), "y": label[dst], "text": _esc(tag), "showarrow": False,
                      "yshift": 14 if k % 2 else -14, "font": {"size": 10, "color": color}, "xanchor": "center"})
    layout = _layout(130 + 62 * max(2, len(hosts)), showlegend=True, annotations=notes,
                     legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "left", "x": 0},
                     margin={"l": 10, "r": 10, "t": 50, "b": 30})
    layout["yaxis"] = dict(_AXIS, type="category", categoryorder="array", categoryarray=[label[x] for x in hosts],
                           autorange="reversed")
    layout["xaxis"] = dict(_AXIS, type="date")
    return {"data": data, "layout": layout}


def _ladder_steps(flow, session, commands, messages, packets):
    """(ts, direction, label, kind) steps of one connection, in time order."""
    steps = []
    if packets is not None and packets.control:
        for ts, side, lab in packets.control:
            steps.append((ts, "c2s" if side == "client" else "s2c", lab, "tcp", 0))
    else:  # derived from the flows table: exact SYN/ACK times, SYN-ACK in between, close side unknown
        if flow.syn_seen:
            steps.append((flow.start, "c2s", "SYN", "tcp", 0))
        if flow.close == "refused":
            steps.append((flow.end, "s2c", "RST", "tcp", 0))
        elif flow.handshake_rtt is not None:
            steps.append((flow.start + flow.handshake_rtt / 2, "s2c", "SYN-ACK", "tcp", 0))
            steps.append((flow.start + flow.handshake_rtt, "c2s", "ACK", "tcp", 0))
        if flow.close == "fin":
            steps.append((flow.end, "c2s", "FIN (side not known)", "tcp", 9))
        elif flow.close == "rst":
            steps.append((flow.end, "c2s", "RST (side not known)", "tcp", 9))
    if flow.close == "unanswered" and not any(s[2] == "SYN-ACK" for s in steps):
        steps.append((flow.end, "none", "no answer", "error", 9))
    # an SMTP message is placed by its keys: the command that carried it, the end of its transaction's data
    by_seq = {c.seq: c for c in commands if c.seq is not None}
    data_ends = defaultdict(list)  # transaction -> its end-of-data commands (".", BDAT) in order
    for c in sorted((c for c in commands if c.transaction is not None and c.command in (".", "BDAT")),
                    key=lambda c: c.seq if c.seq is not None else 0):
        data_ends[c.transaction].append(c)
    for m in messages:
        if m.ts is None:
            continue
        size = f"{m.size:,} bytes" if m.size else ("compose form" if m.direction == "sent" else "page view") \
            if m.size == 0 else "size unknown"
        # the last tuple item orders steps of the same instant (timestamps near 1.8e9 s cannot
        # be nudged by less than a microsecond): data goes before the end-of-data command and
        # before the reply that closes a retrieval
        if m.direction in ("sent", "appended", "uploaded"):
            if m.protocol == "smtp":
                # DATA: the content follows the 354 reply; BDAT: it follows the command line
                after = m.command_seq if m.command_seq is not None else -1
                end = next((c for c in data_ends.get(m.transaction, ()) if (c.seq or 0) >= after), None) \
                    if m.transaction is not None else None
                data = by_seq.get(m.command_seq) if m.command_seq is not None else None
                if data is not None and data.command == "DATA" and data.reply_code == "354" \
                        and data.reply_ts is not None:
                    steps.append((data.reply_ts, "c2s", f"message data ({size})", "data", 4))
                elif end is not None:
                    steps.append((end.ts, "c2s", f"message data ({size})", "data", 2 if end.command == "BDAT" else 0))
                else:
                    steps.append((m.ts, "c2s", f"message data ({size})", "data", 4))
            else:
                steps.append((m.ts, "c2s", f"message data ({size})", "data", 2))
        else:
            steps.append((m.ts, "s2c", f"message ({size})", "data", 2))
    for c in commands:
        if c.command == "":
            steps.append((c.reply_ts or c.ts, "s2c", _reply(c), _reply_kind(c), 1))
            continue
        arg = c.argument or ""
        verb = "&lt;CRLF&gt;.&lt;CRLF&gt; (end of data)" if c.command == "." else _esc(c.command)
        label = " ".join(x for x in (_esc(c.tag) if c.tag else "", verb, _esc(_cut(arg, 60))) if x)
        steps.append((c.ts, "c2s", label, "cmd", 1))
        if c.reply_code is not None or c.reply_text:
            steps.append((c.reply_ts if c.reply_ts is not None else c.ts, "s2c", _reply(c), _reply_kind(c), 3))
    steps.sort(key=lambda s: (s[0], s[4]))
    return steps


def _cut(text: str, n: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def _reply(c) -> str:
    return _esc(_cut(" ".join(x for x in (c.reply_code or "", c.reply_text or "") if x), 70))


def _reply_kind(c) -> str:
    code = (c.reply_code or "").upper()
    if code[:1] in ("4",):
        return "deferred"
    if code[:1] == "5" or code in ("-ERR", "NO", "BAD"):
        return "error"
    return "reply"


_STEP_COLORS = {"tcp": "#7f7f7f", "cmd": "#1f77b4", "reply": "#2ca02c", "data": "#9467bd", "error": "#d62728",
                "deferred": "#ff7f0e"}


def ladder_figure(flow, session, commands, messages, packets, names: dict, max_steps: int = 90):
    """A ladder (sequence) diagram of one connection: client and server lifelines, time downwards."""
    steps = _ladder_steps(flow, session, commands, messages, packets)
    hidden, gap_at = 0, None
    if len(steps) > max_steps:
        tail = [s for s in steps[-6:] if s[3] == "tcp"]  # keep the teardown in view
        gap_at = max_steps - len(tail)
        hidden = len(steps) - gap_at - len(tail)
        steps = steps[:gap_at] + tail
    t0 = flow.start
    n = len(steps)
    rows = n + (1 if hidden else 0)
    # annotations and shapes are collected and set at once: plotly validates the whole
    # list on every add_annotation, which makes adding them one by one quadratic
    shapes = [dict(type="line", x0=x, x1=x, y0=-0.8, y1=rows + 0.2, line=dict(color="#333", width=2))
              for x in (0, 1)]
    notes = []
    cname = names.get(flow.client_ip)
    sname = names.get(flow.server_ip)
    notes.append(dict(x=0, y=-0.9, text=f"<b>client</b> {flow.client_ip}:{flow.client_port}"
                      + (f"<br>{_esc(cname)}" if cname else ""), showarrow=False, yanchor="bottom",
                      font=dict(size=11)))
    notes.append(dict(x=1, y=-0.9, text=f"<b>server</b> {flow.server_ip}:{flow.server_port}"
                      + (f"<br>{_esc(sname)}" if sname else ""), showarrow=False, yanchor="bottom",
                      font=dict(size=11)))
    ticks, texts = [], []
    prev_t = None
    for i, (ts, direction, label, kind, _) in enumerate(steps):
        y = i + (1 if gap_at is not None and i >= gap_at else 0)
        color = _STEP_COLORS.get(kind, "#444")
        if direction == "none":
            notes.append(dict(x=0.5, y=y + 0.3, text=f"<i>{label}</i>", showarrow=False,
                              font=dict(color=color, size=11)))
        else:
            x0, x1 = (0, 1) if direction == "c2s" else (1, 0)
            notes.append(dict(x=x1, y=y + 0.55, ax=x0, ay=y, xref="x", yref="y", axref="x", ayref="y",
                              showarrow=True, arrowhead=2, arrowsize=1.2, arrowwidth=1.6, arrowcolor=color,
                              text=""))
            notes.append(dict(x=0.5, y=y + 0.27, text=label, showarrow=False, yshift=9,
                              font=dict(size=11, color=color), bgcolor="rgba(255,255,255,0.85)"))
        ticks.append(y)
        delta = "" if prev_t is None else f" (+{_dur(ts - prev_t)})"
        texts.append(f"+{_dur(ts - t0) or '0'}{delta}" if ts - t0 >= 0 else f"{_dur(ts - t0)}")
        prev_t = ts
    if hidden:
        notes.append(dict(x=0.5, y=gap_at + 0.3, text=f"<i>\u2026 {hidden} more steps not drawn "
                                                      f"(see the commands table)</i>", showarrow=False,
                          font=dict(size=11, color="#555")))
    layout = _layout(120 + 34 * rows, showlegend=False, shapes=shapes, annotations=notes,
                     margin={"l": 10, "r": 10, "t": 50, "b": 10})
    layout["xaxis"] = {"range": [-0.35, 1.35], "visible": False, "fixedrange": True}
    layout["yaxis"] = {"range": [rows + 0.3, -1.0], "tickvals": ticks, "ticktext": texts, "showgrid": False,
                       "zeroline": False, "fixedrange": True, "tickfont": {"size": 10, "color": "#666"},
                       "automargin": True}
    return {"data": [], "layout": layout}


# -- tables -----------------------------------------------------------------------------------------
def html_table(df: pd.DataFrame, columns: list[str], table_id: str, max_rows: int = 2000) -> str:
    """A sortable, filterable HTML table of ``columns`` (at most ``max_rows`` rows, the cut said)."""
    cols = [c for c in columns if c in df.columns]
    shown = df.head(max_rows)
    data = {c: shown[c].tolist() for c in cols}
    numeric = {c for c in cols if pd.api.types.is_numeric_dtype(df[c].dtype)
               and not pd.api.types.is_bool_dtype(df[c].dtype)}
    # table ids are prefixed: the sections carry the bare names (#sessions) for the navigation links
    out = [f'<div class="tablewrap"><input class="filter" type="search" placeholder="filter rows\u2026" '
           f'data-table="table-{table_id}" aria-label="filter {table_id}">',
           f'<table id="table-{table_id}" class="sortable"><thead><tr>']
    for c in cols:
        out.append(f'<th data-type="{"num" if c in numeric else "text"}" title="sort">{_esc(c)}</th>')
    out.append("</tr></thead><tbody>")
    for i in range(len(shown)):
        out.append("<tr>" + "".join(
            f'<td{" class=num" if c in numeric else ""}>{_esc(cell(data[c][i], c, limit=None, sizes=True))}</td>' for c in cols)
            + "</tr>")
    out.append("</tbody></table>")
    if len(df) > max_rows:
        out.append(f'<p class="note">{len(df) - max_rows:,} more rows not shown; '
                   f'<code>maildissect {table_id} CAPTURE -f csv</code> lists them all.</p>')
    if not len(df):
        out.append(f'<p class="note">none</p>')
    out.append("</div>")
    return "".join(out)


# -- page ------------------------------------------------------------------------------------------
CSS = """
:root { --fg:#1d1d1f; --muted:#666; --line:#ddd; --accent:#1f77b4; --bad:#d62728; --bg:#fff; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       background: var(--bg); margin: 0; }
header { padding: 18px 28px 10px; border-bottom: 1px solid var(--line); }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 2px 0; color: var(--muted); }
nav { position: sticky; top: 0; background: rgba(255,255,255,.96); border-bottom: 1px solid var(--line);
      padding: 6px 28px; z-index: 10; }
nav a { margin-right: 14px; color: var(--accent); text-decoration: none; font-weight: 500; }
main { padding: 8px 28px 40px; max-width: 1500px; }
section { margin-top: 26px; }
h2 { font-size: 18px; border-bottom: 2px solid var(--accent); padding-bottom: 3px; }
h3 { font-size: 15px; margin: 18px 0 4px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 10px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 8px 12px; }
.card b { display: block; font-size: 20px; }
.card span { color: var(--muted); font-size: 12px; }
.note { color: var(--muted); font-size: 12.5px; margin: 4px 0; }
.warn { color: var(--bad); }
.journey, .ladder { border: 1px solid var(--line); border-radius: 8px; padding: 6px 12px 10px; margin: 14px 0; }
.ladders { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 12px; }
.tablewrap { overflow-x: auto; margin: 6px 0 14px; }
table { border-collapse: collapse; font-size: 12.5px; width: 100%; }
th, td { border-bottom: 1px solid var(--line); padding: 3px 7px; text-align: left; vertical-align: top; }
td { max-width: 420px; overflow-wrap: anywhere; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
th { background: #f4f6f8; cursor: pointer; white-space: nowrap; position: sticky; top: 0; }
th.asc::after { content: " \\25B2"; } th.desc::after { content: " \\25BC"; }
input.filter { margin: 2px 0 6px; padding: 3px 6px; width: 260px; border: 1px solid var(--line);
               border-radius: 5px; }
code { background: #f4f6f8; padding: 0 3px; border-radius: 3px; }
dl.legend { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; font-size: 12.5px; }
dl.legend dt { font-weight: 600; }
@media print {
  nav, input.filter, .modebar { display: none !important; }
  body { font-size: 10pt; }
  main { max-width: none; padding: 0 8mm; }
  section { break-before: auto; }
  .journey, .ladder, .plotly-graph-div { break-inside: avoid; page-break-inside: avoid; }
  .ladders { display: block; }
  th { position: static; }
  td { max-width: none; }
  a { color: inherit; text-decoration: none; }
}
"""

JS = """
(function () {
  function key(cell, type) {
    var t = cell.textContent.trim();
    if (type === 'num') { var v = parseFloat(t.replace(/,/g, '')); return isNaN(v) ? -Infinity : v; }
    return t.toLowerCase();
  }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    table.querySelectorAll('th').forEach(function (th, idx) {
      th.addEventListener('click', function () {
        var asc = !th.classList.contains('asc');
        table.querySelectorAll('th').forEach(function (h) { h.classList.remove('asc', 'desc'); });
        th.classList.add(asc ? 'asc' : 'desc');
        var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows), type = th.dataset.type;
        rows.sort(function (a, b) {
          var x = key(a.cells[idx], type), y = key(b.cells[idx], type);
          return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  document.querySelectorAll('input.filter').forEach(function (input) {
    input.addEventListener('input', function () {
      var q = input.value.toLowerCase(), table = document.getElementById(input.dataset.table);
      Array.prototype.forEach.call(table.tBodies[0].rows, function (r) {
        r.style.display = r.textContent.toLowerCase().indexOf(q) === -1 ? 'none' : '';
      });
    });
  });
  window.addEventListener('beforeprint', function () {
    document.querySelectorAll('.plotly-graph-div').forEach(function (d) {
      if (window.Plotly) { Plotly.Plots.resize(d); }
    });
  });
})();
"""


def _cards(result, journeys) -> str:
    r, s = result.records, result.stats
    span = ""
    if s.get("first_ts") is not None and s.get("last_ts") is not None:
        span = _dur(s["last_ts"] - s["first_ts"])
    failed = sum(1 for f in r.flows if f.close in ("refused", "unanswered"))
    envelopes = sum(1 for m in r.messages if m.kind == "envelope")
    cards = [
        (f"{s.get('frames', 0):,}", "frames"),
        (f"{len(r.flows):,}", "TCP connections" + (f" ({failed} failed)" if failed else "")),
        (f"{len(r.sessions):,}", "sessions: " + ", ".join(f"{n} {p}" for p, n in
                                                           sorted(Counter(x.protocol for x in r.sessions).items()))),
        (f"{sum(1 for m in r.messages if m.kind != 'envelope'):,}", "message transfers"
         + (f" (and {envelopes} SMTP transactions without a message)" if envelopes else "")),
        (f"{len(journeys.journeys):,}", "distinct messages (journeys)"),
        (f"{sum(len(m.attachments) for m in r.messages):,}", "attachments"),
        (f"{len(result.files):,}", "files (MIME entities and HTTP files)"),
        (f"{len(r.credentials):,}", "credentials"),
        (f"{len(r.anomalies):,}", "anomalies"),
        (span or "\u2013", "time span"),
    ]
    return '<div class="cards">' + "".join(f'<div class="card"><b>{_esc(v)}</b><span>{_esc(k)}</span></div>'
                                           for v, k in cards) + "</div>"


def _journey_block(j, hops, names, fig_html) -> str:
    from ..correlate import journey_title
    parts = [f'<div class="journey" id="journey-{j.journey_id}"><h3>{_esc(journey_title(j))}</h3>']
    meta = [f"path: {_esc(j.path)}" if j.path else "",
            f"from {_esc(j.from_ or j.mail_from)}" if (j.from_ or j.mail_from) else "",
            f"to {_esc(', '.join(j.rcpt_to))}" if j.rcpt_to else ""]
    parts.append('<p class="note">' + " \u00b7 ".join(x for x in meta if x) + "</p>")
    if fig_html:
        parts.append(fig_html)
    rows = []
    for h in hops:
        rows.append({"hop": h.hop, "role": h.role, "attempt": h.attempt, "outcome": h.outcome,
                     "protocol": h.protocol, "start": _iso(h.start), "latency": _dur(h.latency),
                     "client": f"{h.client_ip}:{h.client_port}" if h.client_port else h.client_ip,
                     "server": f"{h.server_ip}:{h.server_port}" if h.server_ip else "",
                     "session": h.session_id, "queue id": h.queue_id, "reply": h.reply, "match": h.match,
                     "Received check": h.received_check})
    df = pd.DataFrame(rows)
    parts.append(html_table(df, list(df.columns), f"hops-{j.journey_id}", max_rows=200) if len(df) else "")
    if j.received_notes:
        parts.append("<ul>" + "".join(f'<li class="warn">{_esc(n)}</li>' for n in j.received_notes) + "</ul>")
    parts.append("</div>")
    return "".join(parts)


def render_report(result, *, captures=None, show_secrets: bool = False, max_ladders: int = 25,
                  max_journeys: int = 30, max_lanes: int = 200, max_rows: int = 2000,
                  title: str | None = None) -> tuple[str, dict]:
    """The report's HTML text and counts of what it holds (see :func:`write_report`)."""
    from plotly.offline import get_plotlyjs

    from ..capture.control import flow_packets
    from ..timeline import EVENTS
    from ..correlate import ROLES
    show_secrets = show_secrets and not result.config.redact  # --redact wins
    if not show_secrets:
        # the report masks by default: it is made from masked records, as --redact makes
        # every output (the timeline, the ladders and the tables alike)
        from ..redact import masked_analysis
        result = masked_analysis(result)
    records = result.records
    events = result.event_records
    jr = result.journey_records
    names = host_names(records)
    flows = sorted(records.flows, key=lambda f: (f.start, f.flow_id))
    ladder_flows = flows[:max_ladders]
    packets = flow_packets(captures, records.flows, {f.flow_id for f in ladder_flows},
                           limits=result.config.limits) if captures else {}
    sessions = {s.session_id: s for s in records.sessions}
    commands = defaultdict(list)
    for c in records.commands:
        commands[c.session_id].append(c)
    messages = defaultdict(list)
    for m in records.messages:
        messages[m.session_id].append(m)
    files = [str(p) for p in (captures or result.stats.get("files") or [])]
    title = title or ("maildissect report: " + ", ".join(p.rsplit("/", 1)[-1] for p in files) if files
                      else "maildissect report")
    stats = result.stats
    body = []
    body.append(f"<header><h1>{_esc(title)}</h1>"
                f"<p>{_esc(', '.join(files))}</p>"
                f"<p>capture from {_human(stats.get('first_ts'))} to {_human(stats.get('last_ts'))}"
                f" \u00b7 all times UTC</p></header>")
    body.append('<nav><a href="#overview">Overview</a><a href="#timeline">Timeline</a>'
                '<a href="#journeys">Journeys</a><a href="#ladders">Ladders</a><a href="#sessions">Sessions</a>'
                '<a href="#messages">Messages</a><a href="#attachments">Attachments</a><a href="#files">Files</a>'
                '<a href="#credentials">Credentials</a><a href="#anomalies">Anomalies</a>'
                '<a href="#legend">Legend</a></nav><main>')
    # overview
    body.append('<section id="overview"><h2>Overview</h2>')
    body.append(_cards(result, jr))
    if records.sessions or records.flows:
        body.append(_fig_html(overview_figure(records), "fig-overview"))
    body.append("</section>")
    # timeline
    body.append('<section id="timeline"><h2>Timeline</h2><p class="note">One lane per TCP connection, '
                'drawn from its first to its last packet; markers are events (hover for details, click a '
                'legend entry to hide a kind).</p>')
    if flows:
        body.append(_fig_html(timeline_figure(records, events, max_lanes), "fig-timeline"))
        if len(flows) > max_lanes:
            body.append(f'<p class="note">Only the first {max_lanes} of {len(flows):,} connections are drawn.</p>')
    else:
        body.append('<p class="note">No TCP connections in the capture.</p>')
    body.append("</section>")
    # journeys
    body.append('<section id="journeys"><h2>Message journeys</h2><p class="note">Each message followed across '
                'hosts: lanes are hosts, each hop an arrow from sender to receiver at the time it happened '
                '(retrievals point from the server to the reader); failed attempts are dashed red. Latency is '
                'the wait since the previous hop: queue time, retry delay, time in the mailbox.</p>')
    if jr.journeys:
        body.append(html_table(result.journeys, ["journey_id", "message_id", "subject", "first_seen", "hops",
                                                 "failed_attempts", "queue_time", "duration", "roles", "match",
                                                 "received_check"], "journeys", max_rows))
    drawn = 0
    for j in jr.journeys[:max_journeys]:
        hops = jr.hops_of(j.journey_id)
        fig_html = ""
        if any(h.wire and h.start is not None for h in hops):
            fig_html = _fig_html(journey_figure(j, hops, names), f"fig-journey-{j.journey_id}")
            drawn += 1
        body.append(_journey_block(j, hops, names, fig_html))
    if len(jr.journeys) > max_journeys:
        body.append(f'<p class="note">Only the first {max_journeys} of {len(jr.journeys):,} journeys are drawn; '
                    f'the table above lists them all.</p>')
    if not jr.journeys:
        body.append('<p class="note">No messages in the capture.</p>')
    body.append("</section>")
    # ladders
    body.append('<section id="ladders"><h2>Sessions as ladder diagrams</h2><p class="note">Client on the left, '
                'server on the right, time flowing down; the left margin gives the time since the first packet '
                '(and since the previous step). TCP control packets in grey, commands in blue, replies in green '
                '(orange: temporary failure, red: error), message data in purple.'
                + ("" if packets or not captures else " Packet times of SYN-ACK and of the close are estimated: "
                                                      "the capture could not be read again.")
                + '</p><div class="ladders">')
    for f in ladder_flows:
        s = sessions.get(f.flow_id)
        proto = (s.protocol if s else f.protocol) or "tcp"
        head = (f"#{f.flow_id} {proto} {f.client_ip}:{f.client_port} \u2192 {f.server_ip}:{f.server_port}"
                f" \u2014 {_human(f.start)}, {f.close}")
        fig = ladder_figure(f, s, sorted(commands.get(f.flow_id, []), key=lambda c: c.ts),
                            sorted(messages.get(f.flow_id, []), key=lambda m: m.ts or 0.0), packets.get(f.flow_id),
                            names)
        body.append(f'<div class="ladder" id="session-{f.flow_id}"><h3>{_esc(head)}</h3>'
                    f'{_fig_html(fig, f"fig-ladder-{f.flow_id}")}</div>')
    body.append("</div>")
    if len(flows) > max_ladders:
        body.append(f'<p class="note">Ladders are drawn for the first {max_ladders} of {len(flows):,} '
                    f'connections (--ladders N draws more).</p>')
    body.append("</section>")
    # tables
    body.append('<section id="sessions"><h2>Sessions</h2>')
    body.append(html_table(result.sessions, ["session_id", "protocol", "client_ip", "client_port", "server_ip",
                                             "server_port", "start", "end", "helo", "auth_user", "tls", "banner",
                                             "commands", "messages", "bytes_client", "bytes_server", "anomalies",
                                             "complete"], "sessions", max_rows))
    body.append('</section><section id="messages"><h2>Messages</h2>')
    body.append(html_table(result.messages, ["session_id", "ts", "protocol", "direction", "from", "to",
                                             "subject", "message_id", "size", "attachments", "queue_id",
                                             "reply_code", "complete"], "messages", max_rows))
    body.append('</section><section id="attachments"><h2>Attachments</h2>')
    body.append(html_table(result.attachments, ["session_id", "ts", "protocol", "direction", "message_id",
                                                "filename", "content_type", "size", "md5", "sha256"],
                           "attachments", max_rows))
    body.append('</section><section id="files"><h2>Files</h2>')
    body.append('<p class="note">Every MIME leaf entity of every message (body parts too) and every file carried '
                'over HTTP, hashed over its decoded bytes.</p>')
    body.append(html_table(result.files, ["ts", "protocol", "session_id", "direction", "source", "message_id",
                                          "part", "filename", "content_type", "size", "md5", "sha1", "sha256",
                                          "is_attachment", "uri", "complete"], "files", max_rows))
    creds = result.credentials
    body.append('</section><section id="credentials"><h2>Credentials</h2>')
    body.append(f'<p class="note">{"Secrets shown (--show-secrets)." if show_secrets else "Secrets masked; --show-secrets shows them."}</p>')
    body.append(html_table(creds, ["session_id", "protocol", "ts", "mechanism", "user", "secret", "success",
                                   "detail"], "credentials", max_rows))
    body.append('</section><section id="anomalies"><h2>Anomalies</h2>')
    body.append(html_table(result.anomalies, ["session_id", "ts", "side", "name", "detail"], "anomalies",
                           max_rows))
    body.append('</section><section id="legend"><h2>Legend</h2><h3>Hop roles</h3><dl class="legend">')
    body.append("".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in ROLES.items()))
    body.append('</dl><h3>Events</h3><dl class="legend">')
    body.append("".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in EVENTS.items()))
    body.append("</dl></section></main>")
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<meta name=\"generator\" content=\"maildissect\">"
            f"<title>{_esc(title)}</title><style>{CSS}</style>"
            f"<script>{get_plotlyjs()}</script></head><body>" + "".join(body)
            + f"<script>{JS}</script></body></html>\n")
    info = {"sessions": len(records.sessions), "flows": len(flows), "journeys": len(jr.journeys),
            "journeys_drawn": drawn, "ladders": len(ladder_flows), "packets_read": bool(packets)}
    return page, info


def write_report(result, path: str, *, captures=None, show_secrets: bool = False, max_ladders: int = 25,
                 max_journeys: int = 30, max_lanes: int = 200, max_rows: int = 2000,
                 title: str | None = None) -> dict:
    """Write the HTML report of an Analysis to ``path``; returns counts (sessions, journeys, ladders, bytes).

    ``captures``: the capture paths, read once more for exact TCP control packet
    times in the ladders. ``show_secrets``: show passwords and tokens (masked
    otherwise, with :func:`maildissect.redact.masked_analysis`, unless the
    Analysis was made with ``redact``).
    """
    page, info = render_report(result, captures=captures, show_secrets=show_secrets, max_ladders=max_ladders,
                               max_journeys=max_journeys, max_lanes=max_lanes, max_rows=max_rows, title=title)
    data = page.encode("utf-8")
    with open(path, "wb") as f:
        f.write(data)
    info["bytes"] = len(data)
    return info
