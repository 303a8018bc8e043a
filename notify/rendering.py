"""Templates: strict, sandboxed Jinja2 over the repo's `templates/` tree.

templates/<name>/<part files>     each channel's, as its spec names them (`ChannelSpec.parts`):
                                  email.subject.j2, email.txt.j2, sms.txt.j2, webhook.json.j2, ...
templates/<name>/<locale>/...     per-locale overrides, falling back to the above
templates/_layouts/...            shared layouts for {% extends %}
templates/<name>/template.toml    optional: category = "marketing", unsubscribe = true
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
from jinja2.sandbox import SandboxedEnvironment

from notify import channels as registry
from notify.constants import MAX_LOCALE, MAX_TEMPLATE
from notify.errors import TemplateError
from notify.models import shown

# Matched whole (fullmatch): "$" would also match before a trailing newline.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_LOCALE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*")
_UNDEFINED = re.compile(r"'([^']+)' (?:is undefined|has no attribute '([^']+)')")

Rendered = dict[str, str]

CONFIG_FILE = "template.toml"
TRANSACTIONAL = "transactional"  # the category of a template that names none
_CATEGORY = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


@dataclass(frozen=True)
class TemplateConfig:
    """What `templates/<name>/template.toml` says about a template.

    `category`: None for transactional mail (the default), stopped only by
    bounces and opt-outs; else the category an unsubscribe applies to.
    `unsubscribe`: its emails carry a one-click unsubscribe link (RFC 8058).
    """

    category: str | None = None
    unsubscribe: bool = False


def is_category(value: object) -> bool:
    """Whether `value` can name a template category (lowercase letters, digits, _ and -)."""
    return isinstance(value, str) and _CATEGORY.fullmatch(value) is not None


def parse_config(text: str, where: str) -> TemplateConfig:
    """A template.toml's content as a `TemplateConfig`; `TemplateError` naming `where` if it is wrong."""
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TemplateError("template", f"{where}: not TOML: {exc}") from None
    unknown = sorted(set(table) - {"category", "unsubscribe"})
    if unknown:
        raise TemplateError("template", f"{where}: unknown key {unknown[0]!r} (known: category, unsubscribe)")
    category = table.get("category", TRANSACTIONAL)
    if not is_category(category):
        raise TemplateError(
            "template",
            f"{where}: category must be lowercase letters, digits, _ or - (64 at most), "
            f"not {shown(category)}",
        )
    unsubscribe = table.get("unsubscribe", False)
    if not isinstance(unsubscribe, bool):
        raise TemplateError(
            "template", f"{where}: unsubscribe must be true or false, not {shown(unsubscribe)}"
        )
    if unsubscribe and category == TRANSACTIONAL:
        raise TemplateError(
            "template",
            f'{where}: unsubscribe = true needs a category (like "marketing"): an unsubscribe applies '
            "to one category, and transactional mail is stopped only by bounces and opt-outs",
        )
    return TemplateConfig(category=None if category == TRANSACTIONAL else category, unsubscribe=unsubscribe)


def _autoescape(name: str | None) -> bool:
    return name is not None and name.endswith(".html.j2")


class RefusedValue(ValueError):
    """A filter refused a value from `data` (the template is fine, the data is not)."""


# What a browser drops from a URL before it reads the scheme: tab and newlines anywhere,
# C0 controls and spaces at either end (the WHATWG URL standard). "java\tscript:" is javascript:.
_URL_IGNORED = re.compile(r"[\t\n\r]")
_URL_EDGES = "".join(map(chr, range(0x21)))


def url(value: object) -> str:
    """The `url` filter: `value` if it is an absolute http(s) URL, else `RefusedValue`.

    Autoescape keeps data inside an attribute; it cannot stop a `javascript:` or `data:` URL
    from being one. Write `href="{{ link | url }}"` for every link built from data.
    """
    if not isinstance(value, str):
        raise RefusedValue(f"url: must be a string, not {type(value).__name__}")
    cleaned = _URL_IGNORED.sub("", value).strip(_URL_EDGES)
    scheme, _, rest = cleaned.partition(":")
    if scheme.lower() not in ("http", "https") or not rest.startswith("//") or len(rest) <= 2:
        raise RefusedValue(f"url: not an absolute http(s) URL: {shown(value)}")
    return cleaned


class Renderer:
    """Renders one template's parts for one channel; compiled templates are cached."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = SandboxedEnvironment(
            loader=jinja2.FileSystemLoader(root),
            undefined=jinja2.StrictUndefined,
            autoescape=_autoescape,
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=False,  # templates change with a deploy, which restarts the process
        )
        self.env.filters["url"] = url
        self._found: dict[str, list[str]] = {}  # template -> its channels, for the same reason
        self._configs: dict[str, TemplateConfig] = {}

    def names(self) -> list[str]:
        """Every template under the root (folders not starting with _ or .)."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and _NAME.fullmatch(p.name) and not p.name.startswith("_")
        )

    def channels(self, name: str) -> list[str]:
        """The channels template `name` has: those whose required files exist."""
        self.check_name(name)
        return list(self._found[name])

    def config(self, name: str) -> TemplateConfig:
        """Template `name`'s template.toml (the defaults if it has none); read once."""
        self.check_name(name)
        found = self._configs.get(name)
        if found is None:
            path = self.root / name / CONFIG_FILE
            if not path.is_file():
                found = TemplateConfig()
            else:
                try:
                    text = path.read_text(encoding="utf-8")
                except (UnicodeDecodeError, OSError) as exc:
                    raise TemplateError("template", f"{name}/{CONFIG_FILE} {_unreadable(exc)}") from None
                found = parse_config(text, f"{name}/{CONFIG_FILE}")
            self._configs[name] = found
        return found

    def render(self, name: str, channel: str, data: Mapping[str, Any], locale: str | None = None) -> Rendered:
        """Each part of `channel`'s message, rendered strictly from `data`."""
        self.check_name(name)
        check_locale(locale)
        spec = registry.channel(channel)
        folder = self._folder(name, channel, locale)
        rendered: Rendered = {}
        for part, filename in spec.parts.items():
            template = self._load(folder, filename, optional=part in spec.optional_parts)
            if template is None:
                continue
            text = self._render(template, data)
            rendered[part] = " ".join(text.split()) if part in spec.single_line_parts else text.strip()
        return rendered

    def check_name(self, name: object) -> None:
        """Raise `TemplateError` unless `name` is a template under the root."""
        if isinstance(name, str) and name in self._found:
            return
        # MAX_TEMPLATE is well under a file name's 255 bytes: no OSError from is_dir().
        if (
            not isinstance(name, str)
            or len(name) > MAX_TEMPLATE
            or not _NAME.fullmatch(name)
            or name[0] == "_"
        ):
            raise TemplateError("template", f"not a template name: {shown(name)}")
        folder = self.root / name
        if not folder.is_dir():
            raise TemplateError("template", f"unknown template {name!r} (none under {self.root})")
        self._found[name] = [
            channel
            for channel, spec in registry.channels().items()
            if all((folder / f).is_file() for f in spec.required_parts.values())
        ]

    def _folder(self, name: str, channel: str, locale: str | None) -> str:
        """Where every part of `channel`'s message comes from: the most specific folder of
        `locale`'s chain ("de-AT", then "de") that has all of the channel's required parts,
        else the template's own. Never a mix: a German subject and text with an English
        HTML part reads as a broken message."""
        required = registry.channel(channel).required_parts.values()
        for loc in _locale_chain(locale):
            for spelling in dict.fromkeys((loc, loc.replace("-", "_"))):
                folder = f"{name}/{spelling}"
                if all((self.root / folder / filename).is_file() for filename in required):
                    return folder
        return name

    def _load(self, folder: str, filename: str, *, optional: bool) -> jinja2.Template | None:
        path = f"{folder}/{filename}"
        if optional and not (self.root / path).is_file():
            return None
        try:
            return self.env.get_template(path)
        except jinja2.TemplateNotFound:
            raise TemplateError("template", f"template {folder!r} has no {filename}") from None
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError("template", f"{exc.name}:{exc.lineno}: {exc.message}") from None
        except (UnicodeDecodeError, OSError) as exc:
            raise TemplateError("template", f"{path} {_unreadable(exc)}") from None

    def _render(self, template: jinja2.Template, data: Mapping[str, Any]) -> str:
        try:
            return template.render(data)
        except jinja2.UndefinedError as exc:
            # "'name' is undefined" names a top-level variable; "'dict object' has
            # no attribute 'name'" does not say whose, so only "data" is certain.
            match = _UNDEFINED.search(str(exc))
            field = f"data.{match[1]}" if match and not match[2] else "data"
            raise TemplateError(field, f"{template.name} needs it: {exc}") from None
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError("template", f"{exc.name}:{exc.lineno}: {exc.message}") from None
        except RefusedValue as exc:
            raise TemplateError("data", f"{template.name}: {exc}") from None
        except jinja2.TemplateError as exc:  # includes the sandbox's SecurityError
            raise TemplateError("template", f"{template.name}: {exc}") from None
        except Exception as exc:  # a filter or test raising on the given data
            raise TemplateError("data", f"{template.name}: {type(exc).__name__}: {exc}") from None


def check_locale(locale: object) -> None:
    """Raise `TemplateError` unless `locale` is None or a locale tag like "de" or "pt_BR"."""
    if locale is None:
        return
    if not isinstance(locale, str):
        raise TemplateError("locale", f"must be a string, not {type(locale).__name__}")
    if len(locale) > MAX_LOCALE:
        raise TemplateError("locale", f"is {len(locale)} characters, over the limit of {MAX_LOCALE}")
    if not _LOCALE.fullmatch(locale):
        raise TemplateError("locale", f"not a locale tag: {shown(locale)}")


def _locale_chain(locale: str | None) -> list[str]:
    """ "de-AT" -> ["de-AT", "de"]: most specific first."""
    if not locale:
        return []
    parts = locale.replace("_", "-").split("-")
    return ["-".join(parts[:i]) for i in range(len(parts), 0, -1)]


def check_template(renderer: Renderer, name: str) -> list[str]:
    """Problems with template `name` that no data can fix: syntax, half a channel."""
    problems = []
    folder = renderer.root / name
    try:
        renderer.config(name)
    except TemplateError as exc:
        problems.append(str(exc).removeprefix("template: "))
    for path in sorted(folder.rglob("*.j2")):
        relative = path.relative_to(renderer.root).as_posix()
        try:
            _parse(renderer, relative)
        except TemplateError as exc:
            problems.append(str(exc).removeprefix("template: "))
    for channel, spec in registry.channels().items():
        present = [f for f in spec.parts.values() if (folder / f).is_file()]
        required = list(spec.required_parts.values())
        missing = [f for f in required if f not in present]
        if present and missing:
            problems.append(
                f"{name}/: has {', '.join(present)} but lacks {', '.join(missing)}, "
                f"so it has no {channel} channel"
            )
        for locale in sorted(p for p in folder.iterdir() if p.is_dir()):
            here = [f for f in spec.parts.values() if (locale / f).is_file()]
            lacking = [f for f in required if f not in here]
            if here and lacking:
                problems.append(
                    f"{name}/{locale.name}/: has {', '.join(here)} but lacks {', '.join(lacking)}, "
                    f"so its {channel} message is not in {locale.name}: each channel's parts "
                    "come from one folder"
                )
    return problems


def variables(renderer: Renderer, name: str, channel: str) -> set[str]:
    """Top-level variables `channel`'s templates use, layouts included."""
    found: set[str] = set()
    pending = [f"{name}/{f}" for f in registry.channel(channel).parts.values()]
    seen: set[str] = set()
    while pending:
        template = pending.pop()
        if template in seen or not (renderer.root / template).is_file():
            continue
        seen.add(template)
        ast = _parse(renderer, template)
        found |= jinja2.meta.find_undeclared_variables(ast)
        pending += [t for t in jinja2.meta.find_referenced_templates(ast) if t]
    return found


def _parse(renderer: Renderer, template: str) -> jinja2.nodes.Template:
    """The parsed template file `template` (a path under the root), or a `TemplateError` naming it."""
    path = renderer.root / template
    try:
        return renderer.env.parse(path.read_text(encoding="utf-8"), name=template, filename=str(path))
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError("template", f"{template}:{exc.lineno}: {exc.message}") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise TemplateError("template", f"{template} {_unreadable(exc)}") from None


def _unreadable(exc: UnicodeDecodeError | OSError) -> str:
    """Why a template file could not be read, to follow its name."""
    if isinstance(exc, UnicodeDecodeError):
        return f"is not UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
    return f"cannot be read: {exc.strerror or exc}"
