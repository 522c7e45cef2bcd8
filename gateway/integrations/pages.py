"""The connect pages' HTML: the start page of an OAuth provider, the form of a secret provider,
and the result pages. Plain HTML with one small stylesheet and no script; every value is escaped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from html import escape

from gateway.integrations.providers import ProviderSpec

STYLE = """
:root { color-scheme: light dark; --accent: %(accent)s; }
* { box-sizing: border-box; }
body { margin: 0; min-height: 100vh; display: grid; place-items: center; background: #f4f4f7;
  font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2330; }
main { width: min(28rem, calc(100vw - 2rem)); background: #fff; border-radius: 14px; padding: 2rem;
  box-shadow: 0 1px 3px rgba(0,0,0,.08), 0 8px 24px rgba(0,0,0,.06); }
h1 { font-size: 1.3rem; margin: 0 0 .5rem; }
p { margin: .5rem 0 1rem; color: #4a5060; }
.app { font-size: .85rem; text-transform: uppercase; letter-spacing: .06em; color: #8a90a0; margin: 0 0 1rem; }
label { display: block; font-weight: 600; margin: 1rem 0 .3rem; }
.optional { font-weight: 400; color: #8a90a0; }
input[type=text], input[type=password] { width: 100%%; padding: .6rem .7rem; font: inherit;
  border: 1px solid #cfd3dc; border-radius: 8px; }
input[aria-invalid=true] { border-color: #c62828; }
.hint { font-size: .85rem; color: #8a90a0; margin: .25rem 0 0; }
.error { font-size: .9rem; color: #c62828; margin: .3rem 0 0; }
.actions { display: flex; gap: .75rem; margin-top: 1.5rem; flex-wrap: wrap; }
button { font: inherit; padding: .6rem 1.1rem; border-radius: 8px; cursor: pointer; border: 1px solid #cfd3dc;
  background: #fff; color: #1f2330; }
button.primary { background: var(--accent); border-color: var(--accent); color: #fff; font-weight: 600; }
.status { font-size: 2rem; margin: 0 0 .5rem; }
@media (prefers-color-scheme: dark) {
  body { background: #14161c; color: #e7e9ee; } main { background: #1d2028; box-shadow: none; }
  p { color: #b4b9c6; } input[type=text], input[type=password] { background: #14161c; color: inherit;
  border-color: #3a3f4c; } button { background: #1d2028; color: inherit; border-color: #3a3f4c; }
}
"""


@dataclass(frozen=True)
class PageStyle:
    app_name: str
    accent: str = "#4f46e5"


def _document(style: PageStyle, title: str, body: str) -> str:
    accent = style.accent if _is_css_color(style.accent) else "#4f46e5"
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{escape(title)} · {escape(style.app_name)}</title>"
        f"<style>{STYLE % {'accent': accent}}</style></head>\n<body><main>"
        f'<p class="app">{escape(style.app_name)}</p>{body}</main></body></html>\n'
    )


def _is_css_color(value: str) -> bool:
    return value.startswith("#") and len(value) in (4, 7) and all(c in "0123456789abcdefABCDEF" for c in value[1:])


BYSTANDER_WARNING = (
    '<p class="hint">This link connects the account for the person who asked the bot for it. '
    "If someone else asked (for example in a group chat), close this page.</p>"
)
"""Connect links can be seen by others in a group chat; whoever continues connects their own
account for the asker. Until the link is sent privately there, the page says so."""


def _decline_button(decline_url: str, state: str) -> str:
    return (
        f'<form method="post" action="{escape(decline_url)}">'
        f'<input type="hidden" name="state" value="{escape(state)}">'
        '<button type="submit" name="decline" value="1">Don\'t connect</button></form>'
    )


def oauth_start_page(
    style: PageStyle, provider: ProviderSpec, *, state: str, action_url: str, decline_url: str, reason: str = ""
) -> str:
    """Continue to the provider (a POST, so link previews that fetch the URL change nothing)."""
    title = f"Connect {provider.title}"
    scopes = ", ".join(provider.scopes)
    body = (
        f"<h1>{escape(title)}</h1>"
        f"<p>{escape(style.app_name)} asks to use your {escape(provider.title)} account"
        f"{' — ' + escape(reason) if reason else ''}. You will sign in on {escape(provider.title)}'s own site.</p>"
        + (f'<p class="hint">Access requested: {escape(scopes)}</p>' if scopes else "")
        + BYSTANDER_WARNING
        + '<div class="actions">'
        f'<form method="post" action="{escape(action_url)}">'
        f'<input type="hidden" name="state" value="{escape(state)}">'
        f'<button class="primary" type="submit">Continue to {escape(provider.title)}</button></form>'
        + _decline_button(decline_url, state)
        + "</div>"
    )
    return _document(style, title, body)


def secret_form_page(
    style: PageStyle,
    provider: ProviderSpec,
    *,
    state: str,
    action_url: str,
    decline_url: str,
    values: Mapping[str, str] | None = None,
    errors: Mapping[str, str] | None = None,
) -> str:
    """The fields of a secret provider. Secret values are never echoed back after an error."""
    values = values or {}
    errors = errors or {}
    title = f"Connect {provider.title}"
    inputs = []
    for spec in provider.fields:
        error = errors.get(spec.name)
        kind = "password" if spec.secret else "text"
        shown = "" if spec.secret else values.get(spec.name, "")
        optional = "" if spec.required else ' <span class="optional">(optional)</span>'
        inputs.append(
            f'<label for="f_{escape(spec.name)}">{escape(spec.label)}{optional}</label>'
            f'<input id="f_{escape(spec.name)}" type="{kind}" name="{escape(spec.name)}" '
            f'value="{escape(shown)}" autocomplete="off" spellcheck="false"'
            + (" required" if spec.required else "")
            + (' aria-invalid="true"' if error else "")
            + ">"
            + (f'<p class="hint">{escape(spec.help)}</p>' if spec.help else "")
            + (f'<p class="error" role="alert">{escape(error)}</p>' if error else "")
        )
    body = (
        f"<h1>{escape(title)}</h1>"
        f"<p>{escape(style.app_name)} needs these to use {escape(provider.title)}. "
        "They are stored encrypted and only used on your behalf.</p>"
        + BYSTANDER_WARNING
        + f'<form method="post" action="{escape(action_url)}">'
        f'<input type="hidden" name="state" value="{escape(state)}">'
        + "".join(inputs)
        + '<div class="actions"><button class="primary" type="submit">Connect</button></div></form>'
        + '<div class="actions">'
        + _decline_button(decline_url, state)
        + "</div>"
    )
    return _document(style, title, body)


def result_page(style: PageStyle, *, heading: str, message: str, ok: bool) -> str:
    mark = "✓" if ok else "✕"
    body = f'<p class="status" aria-hidden="true">{mark}</p><h1>{escape(heading)}</h1><p>{escape(message)}</p>'
    return _document(style, heading, body)
