"""The HTML every feature page shares (dashboards, the blind packet): the stylesheet,
escaping, the page frame and number formatting.
"""

from __future__ import annotations

import html
import math

CSS = """
:root { --ink:#1d2330; --muted:#667085; --line:#e4e7ec; --card:#ffffff; --bg:#f6f7f9;
        --accent:#d9480f; --link:#1c64f2; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 20px 24px 48px; }
a { color: var(--link); text-decoration: none; } a:hover { text-decoration: underline; }
h1 { font-size: 22px; margin: 4px 0 2px; } h2 { font-size: 15px; margin: 0 0 10px; }
.sub { color: var(--muted); margin-bottom: 16px; }
.nav { display: flex; gap: 14px; font-size: 13px; color: var(--muted); }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
        padding: 14px 16px; margin-bottom: 14px; }
.grid { display: grid; gap: 14px; }
.g1 { grid-template-columns: minmax(0, 1fr); }
.g2 { grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); }
.g3 { grid-template-columns: repeat(3, minmax(0, 1fr)); }
.g23 { grid-template-columns: minmax(0, 2fr) minmax(0, 3fr); }
.stats { display: flex; flex-wrap: wrap; gap: 10px 44px; }
.stat .v { font-size: 18px; font-weight: 600; white-space: nowrap; }
.stat .k { color: var(--muted); font-size: 12px; }
svg { max-width: 100%; height: auto; display: block; }
table.tt { table-layout: fixed; } table.tt td.num { width: 64px; }
table.tt .tok { display: inline-block; max-width: 100%; overflow: hidden;
                text-overflow: ellipsis; vertical-align: bottom; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 3px 8px; border-bottom: 1px solid var(--line); }
th { color: var(--muted); font-weight: 500; } td.num { text-align: right;
     font-variant-numeric: tabular-nums; }
.tok { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; white-space: pre;
       background: #f2f4f7; border-radius: 4px; padding: 0 4px; }
.ex { display: flex; align-items: baseline; gap: 10px; padding: 3px 0;
      border-bottom: 1px dashed var(--line); }
.ex .val { width: 56px; flex: none; text-align: right; color: var(--muted);
           font-variant-numeric: tabular-nums; font-size: 12px; }
.ex .txt { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 13px;
           white-space: pre-wrap; word-break: break-all; }
.t { border-radius: 3px; padding: 1px 0; margin-right: 1px; }
.t.c { outline: 1.5px solid var(--accent); outline-offset: 0; font-weight: 600; }
.band { color: var(--muted); font-size: 12px; margin: 10px 0 2px; }
.bar { height: 10px; background: var(--accent); border-radius: 2px; }
input[type=search] { width: 260px; padding: 7px 10px; border: 1px solid var(--line);
                     border-radius: 8px; font-size: 14px; }
#status { color: var(--muted); margin-left: 10px; }
svg text { font: 11px system-ui, sans-serif; fill: var(--muted); }
.pos { color: #067647; } .neg { color: #b42318; }
"""


def esc(text: object) -> str:
    """HTML-escape any text (quotes too)."""
    return html.escape(str(text), quote=True)


def token_text(s: str) -> str:
    """Escaped display text of a token: newlines and tabs made visible."""
    if s == "":
        return "\u2205"
    return esc(s.replace("\n", "\u21b5").replace("\t", "\u2192"))


def page(title: str, body: str, script: str = "") -> str:
    tail = f"<script>{script}</script>" if script else ""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>"
        f"<body><main>{body}</main>{tail}</body></html>\n"
    )


def fmt(x: float, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}g}"
