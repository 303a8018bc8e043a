"""Template previews: every channel and locale of a template, rendered with its sample.json."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from notify import channels
from notify.channels.sms import Segments, segments
from notify.constants import UNSUBSCRIBE_URL
from notify.errors import TemplateError
from notify.rendering import Renderer
from notify.settings import Settings

SAMPLE = "sample.json"
MAX_SAMPLE = 64 * 1024  # bytes: a sample bigger than a send() may carry is not one


@dataclass(frozen=True)
class Preview:
    """One channel in one locale: its rendered parts, or why it does not render."""

    channel: str
    locale: str | None  # None: the template's own folder
    parts: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    falls_back: bool = False  # the locale has no files of this channel: the default's are shown
    sms: Segments | None = None


@dataclass(frozen=True)
class Listed:
    """A template as the list shows it: its channels and locales, or why it is broken."""

    name: str
    channels: list[str]
    locales: list[str]
    has_sample: bool
    error: str | None = None


def listing(settings: Settings) -> list[Listed]:
    renderer = Renderer(settings.templates_dir)
    found = []
    for name in renderer.names():
        folder = renderer.root / name
        try:
            found.append(Listed(name, renderer.channels(name), _locales(folder), (folder / SAMPLE).is_file()))
        except TemplateError as exc:
            found.append(Listed(name, [], [], False, _why(exc)))
    return found


def sample(settings: Settings, name: str) -> tuple[dict[str, Any], str | None]:
    """Template `name`'s sample data, and why it has none that can be used (then {})."""
    renderer = Renderer(settings.templates_dir)
    renderer.check_name(name)
    path = renderer.root / name / SAMPLE
    if not path.is_file():
        return {}, f"{name}/{SAMPLE} does not exist: rendered with no data"
    try:
        if path.stat().st_size > MAX_SAMPLE:
            return {}, f"{name}/{SAMPLE} is over {MAX_SAMPLE} bytes"
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        return {}, f"{name}/{SAMPLE} cannot be read: {type(exc).__name__}: {exc}"
    if not isinstance(data, dict):
        return {}, f"{name}/{SAMPLE} is not a JSON object"
    return data, None


def previews(settings: Settings, name: str, data: dict[str, Any]) -> list[Preview]:
    """Each channel of template `name` in the default locale and in each of its locale folders.

    Raises:
        TemplateError: `name` is not a template.
    """
    renderer = Renderer(settings.templates_dir)
    renderer.check_name(name)
    values = dict(data)
    if renderer.config(name).unsubscribe:  # the worker adds the recipient's own link, as the CLI does
        base = (settings.public_url or "https://notify.invalid").rstrip("/")
        values.setdefault(UNSUBSCRIBE_URL, f"{base}/u/preview")
    folder = renderer.root / name
    return [
        _preview(renderer, name, channel, locale, values, folder)
        for locale in [None, *_locales(folder)]
        for channel in renderer.channels(name)
    ]


def _preview(
    renderer: Renderer, name: str, channel: str, locale: str | None, data: dict[str, Any], folder: Path
) -> Preview:
    required = channels.channel(channel).required_parts.values()
    falls_back = locale is not None and not all((folder / locale / f).is_file() for f in required)
    try:
        parts = renderer.render(name, channel, data, locale)
    except TemplateError as exc:
        return Preview(channel, locale, error=_why(exc), falls_back=falls_back)
    counted = segments(parts["body"]) if channel == "sms" and "body" in parts else None
    return Preview(channel, locale, parts, falls_back=falls_back, sms=counted)


def _locales(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def _why(exc: TemplateError) -> str:
    return str(exc).removeprefix("template: ")
