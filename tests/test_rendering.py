"""The template renderer: strict, sandboxed, escaped where it must be, locale-aware."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from notify.channels.webhook import check_body
from notify.errors import NotifyError, TemplateError
from notify.rendering import Renderer, check_template, variables

REPO_TEMPLATES = Path(__file__).resolve().parents[1] / "templates"


def make_templates(root: Path, files: dict[str, str]) -> Renderer:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return Renderer(root)


EMAIL = {
    "greet/email.subject.j2": "Hi {{ name }}",
    "greet/email.txt.j2": "Hello {{ name }}, text",
    "greet/email.html.j2": "<p>Hello {{ name }}</p>",
}


# -- strict undefined -------------------------------------------------------------


@pytest.mark.parametrize("channel", ["email", "sms", "push"])
def test_a_missing_variable_is_a_template_error_naming_it(tmp_path: Path, channel: str) -> None:
    renderer = make_templates(
        tmp_path,
        {
            **EMAIL,
            "greet/sms.txt.j2": "Hi {{ name }}",
            "greet/push.title.j2": "Hi {{ name }}",
            "greet/push.body.j2": "Body",
        },
    )
    with pytest.raises(TemplateError) as caught:
        renderer.render("greet", channel, {})
    assert caught.value.field == "data.name"
    assert "name" in str(caught.value)


def test_a_missing_variable_inside_text_is_never_rendered_as_empty(tmp_path: Path) -> None:
    renderer = make_templates(tmp_path, {"greet/sms.txt.j2": "Your code is {{ code }}."})
    with pytest.raises(TemplateError) as caught:
        renderer.render("greet", "sms", {"name": "Ada"})
    assert caught.value.field == "data.code"


def test_a_missing_attribute_is_a_template_error_naming_the_variable(tmp_path: Path) -> None:
    renderer = make_templates(tmp_path, {"greet/sms.txt.j2": "Hi {{ user.name }}"})
    with pytest.raises(TemplateError) as caught:
        renderer.render("greet", "sms", {"user": {"email": "ada@example.com"}})
    # The field must not point at an unrelated top-level `name` the caller never had to give.
    assert caught.value.field in ("data", "data.user", "data.user.name")
    assert "name" in str(caught.value)


def test_a_missing_object_for_an_attribute_names_the_object(tmp_path: Path) -> None:
    renderer = make_templates(tmp_path, {"greet/sms.txt.j2": "Hi {{ user.name }}"})
    with pytest.raises(TemplateError) as caught:
        renderer.render("greet", "sms", {})
    assert caught.value.field == "data.user"


def test_template_error_is_a_notify_error() -> None:
    assert issubclass(TemplateError, NotifyError)


# -- sandbox -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
        "{{ name.__class__ }}",
    ],
)
def test_the_sandbox_refuses_unsafe_attribute_access(tmp_path: Path, source: str) -> None:
    renderer = make_templates(tmp_path, {"greet/sms.txt.j2": source})
    with pytest.raises(TemplateError) as caught:
        renderer.render("greet", "sms", {"name": "Ada"})
    message = str(caught.value)
    assert "<class" not in message
    assert "__builtins__" not in message
    assert "uid=" not in message


# -- escaping ------------------------------------------------------------------------


def test_html_is_autoescaped_while_text_and_subject_are_not(tmp_path: Path) -> None:
    renderer = make_templates(tmp_path, EMAIL)
    evil = "<script>alert('x') & co</script>"
    rendered = renderer.render("greet", "email", {"name": evil})
    assert "&lt;script&gt;" in rendered["html"]
    assert "<script>" not in rendered["html"]
    assert "&amp; co" in rendered["html"]
    assert rendered["text"] == f"Hello {evil}, text"
    assert rendered["subject"] == f"Hi {evil}"


def test_html_in_a_shared_layout_is_autoescaped_too(tmp_path: Path) -> None:
    renderer = make_templates(
        tmp_path,
        {
            **EMAIL,
            "_layouts/page.html.j2": "<footer>{{ company }}</footer>{% block content %}{% endblock %}",
            "greet/email.html.j2": '{% extends "_layouts/page.html.j2" %}{% block content %}x{% endblock %}',
        },
    )
    rendered = renderer.render("greet", "email", {"name": "Ada", "company": "<b>ACME</b>"})
    assert "&lt;b&gt;ACME&lt;/b&gt;" in rendered["html"]


@pytest.mark.parametrize("breaker", ["\n", "\r\n", "\r", "\u2028", "\n\nBcc: x@y.com"])
def test_a_subject_with_line_breaks_in_its_data_renders_on_one_line(tmp_path: Path, breaker: str) -> None:
    renderer = make_templates(tmp_path, EMAIL)
    rendered = renderer.render("greet", "email", {"name": f"Ada{breaker}Bcc: x@y.com"})
    subject = rendered["subject"]
    assert "\n" not in subject
    assert "\r" not in subject
    assert len(subject.splitlines()) == 1
    assert subject.startswith("Hi Ada")


def test_a_subject_template_spanning_lines_renders_on_one_line(tmp_path: Path) -> None:
    renderer = make_templates(tmp_path, {**EMAIL, "greet/email.subject.j2": "Hi\n{{ name }}\r\n!\n"})
    assert renderer.render("greet", "email", {"name": "Ada"})["subject"] == "Hi Ada !"


def test_a_push_title_renders_on_one_line(tmp_path: Path) -> None:
    renderer = make_templates(tmp_path, {"greet/push.title.j2": "Hi {{ name }}", "greet/push.body.j2": "b"})
    assert renderer.render("greet", "push", {"name": "A\r\nB"})["title"] == "Hi A B"


# -- locales -------------------------------------------------------------------------

LOCALIZED = {
    "greet/sms.txt.j2": "Hello {{ name }}",
    "greet/de/sms.txt.j2": "Hallo {{ name }}",
    "greet/push.title.j2": "Hello",
    "greet/push.body.j2": "Body {{ name }}",
    "greet/de/push.title.j2": "Hallo",
    "greet/de/push.body.j2": "Text {{ name }}",
}


@pytest.mark.parametrize("locale", ["de", "de-AT", "de_AT", "de-DE-1996"])
def test_a_locale_and_its_regional_variants_use_the_locale_files(tmp_path: Path, locale: str) -> None:
    renderer = make_templates(tmp_path, LOCALIZED)
    assert renderer.render("greet", "sms", {"name": "Ada"}, locale) == {"body": "Hallo Ada"}


@pytest.mark.parametrize("locale", [None, "fr", "fr-CA", "en"])
def test_a_locale_without_files_falls_back_to_the_default(tmp_path: Path, locale: str | None) -> None:
    renderer = make_templates(tmp_path, LOCALIZED)
    assert renderer.render("greet", "sms", {"name": "Ada"}, locale) == {"body": "Hello Ada"}


def test_a_locale_folder_lacking_a_part_of_the_channel_is_not_used_for_it(tmp_path: Path) -> None:
    """Not a German title over an English body: the channel's parts come from one folder."""
    half = {path: text for path, text in LOCALIZED.items() if path != "greet/de/push.body.j2"}
    renderer = make_templates(tmp_path, half)
    assert renderer.render("greet", "push", {"name": "Ada"}, "de") == {"title": "Hello", "body": "Body Ada"}
    assert renderer.render("greet", "sms", {"name": "Ada"}, "de") == {"body": "Hallo Ada"}


def test_a_regional_locale_folder_wins_over_its_language(tmp_path: Path) -> None:
    renderer = make_templates(tmp_path, {**LOCALIZED, "greet/de-AT/sms.txt.j2": "Servus {{ name }}"})
    assert renderer.render("greet", "sms", {"name": "Ada"}, "de-AT") == {"body": "Servus Ada"}
    assert renderer.render("greet", "sms", {"name": "Ada"}, "de_AT") == {"body": "Servus Ada"}
    assert renderer.render("greet", "sms", {"name": "Ada"}, "de") == {"body": "Hallo Ada"}


def test_a_locale_folder_spelled_with_an_underscore_is_used(tmp_path: Path) -> None:
    renderer = make_templates(tmp_path, {**LOCALIZED, "greet/pt_BR/sms.txt.j2": "Olá {{ name }}"})
    assert renderer.render("greet", "sms", {"name": "Ada"}, "pt_BR") == {"body": "Olá Ada"}


@pytest.mark.parametrize(
    "locale",
    ["../etc", "de/../..", "/etc", "", "d", "de AT", "..", "de\\x", "de\n", "de-AT\n", "de\x00", 42, b"de"],
)
def test_a_malformed_locale_is_rejected(tmp_path: Path, locale: object) -> None:
    renderer = make_templates(tmp_path, LOCALIZED)
    with pytest.raises(TemplateError) as caught:
        renderer.render("greet", "sms", {"name": "Ada"}, locale)  # type: ignore[arg-type]
    assert caught.value.field == "locale"


def test_a_locale_longer_than_35_characters_is_rejected(tmp_path: Path) -> None:
    renderer = make_templates(tmp_path, LOCALIZED)
    longest = "de-abcdefgh-abcdefgh-abcdefgh-abcde"
    assert renderer.render("greet", "sms", {"name": "Ada"}, longest) == {"body": "Hallo Ada"}
    with pytest.raises(TemplateError) as caught:
        renderer.render("greet", "sms", {"name": "Ada"}, longest + "f")
    assert caught.value.field == "locale"
    assert "over the limit of 35" in str(caught.value)


# -- layouts -------------------------------------------------------------------------


def test_templates_can_extend_shared_layouts(tmp_path: Path) -> None:
    renderer = make_templates(
        tmp_path,
        {
            "_layouts/base.txt.j2": "{% block content %}{% endblock %}\n--\n{{ company }}",
            "greet/email.subject.j2": "Hi",
            "greet/email.txt.j2": '{% extends "_layouts/base.txt.j2" %}{% block content %}Hello {{ name }}'
            "{% endblock %}",
        },
    )
    rendered = renderer.render("greet", "email", {"name": "Ada", "company": "ACME"})
    assert rendered["subject"] == "Hi"
    assert rendered["text"].startswith("Hello Ada")
    assert rendered["text"].endswith("--\nACME")


def test_a_layout_variable_missing_from_data_is_a_template_error(tmp_path: Path) -> None:
    renderer = make_templates(
        tmp_path,
        {
            "_layouts/base.txt.j2": "{% block content %}{% endblock %} {{ company }}",
            "greet/sms.txt.j2": '{% extends "_layouts/base.txt.j2" %}{% block content %}Hi{% endblock %}',
        },
    )
    with pytest.raises(TemplateError) as caught:
        renderer.render("greet", "sms", {})
    assert caught.value.field == "data.company"


def test_layouts_are_not_templates(tmp_path: Path) -> None:
    renderer = make_templates(tmp_path, {"_layouts/sms.txt.j2": "x", "greet/sms.txt.j2": "y"})
    assert renderer.names() == ["greet"]
    with pytest.raises(TemplateError) as caught:
        renderer.render("_layouts", "sms", {})
    assert caught.value.field == "template"


# -- names and channels -----------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "nope",
        "../templates",
        "greet/..",
        "",
        ".hidden",
        "greet/de",
        "greet\n",
        "g" * 201,
        "g" * 300,
        42,
        None,
    ],
)
def test_an_unknown_or_malformed_template_name_is_a_template_error(tmp_path: Path, name: object) -> None:
    renderer = make_templates(tmp_path, LOCALIZED)
    with pytest.raises(TemplateError) as caught:
        renderer.render(name, "sms", {"name": "Ada"})  # type: ignore[arg-type]
    assert caught.value.field == "template"


def test_channels_of_an_unknown_template_is_a_template_error(tmp_path: Path) -> None:
    renderer = make_templates(tmp_path, LOCALIZED)
    with pytest.raises(TemplateError) as caught:
        renderer.channels("nope")
    assert caught.value.field == "template"


def test_a_template_name_with_a_trailing_newline_is_not_a_name(tmp_path: Path) -> None:
    renderer = make_templates(tmp_path, LOCALIZED)
    with pytest.raises(TemplateError, match="not a template name"):
        renderer.check_name("greet\n")
    assert renderer.names() == ["greet"]


def test_a_renderer_looks_at_a_templates_files_once(tmp_path: Path) -> None:
    # Templates change with a deploy, which restarts the process: send() need
    # not stat the template's files on every call.
    renderer = make_templates(tmp_path, LOCALIZED)
    assert renderer.channels("greet") == ["sms", "push"]
    (tmp_path / "greet" / "push.body.j2").unlink()
    assert renderer.channels("greet") == ["sms", "push"]
    assert Renderer(tmp_path).channels("greet") == ["sms"]


def test_channels_reports_a_channel_only_when_its_required_files_exist(tmp_path: Path) -> None:
    renderer = make_templates(
        tmp_path,
        {
            "full/email.subject.j2": "s",
            "full/email.txt.j2": "t",
            "full/email.html.j2": "h",
            "full/sms.txt.j2": "s",
            "full/push.title.j2": "t",
            "full/push.body.j2": "b",
            "no_html/email.subject.j2": "s",
            "no_html/email.txt.j2": "t",
            "html_only/email.subject.j2": "s",
            "html_only/email.html.j2": "h",
            "half_push/push.title.j2": "t",
            "half_push/sms.txt.j2": "s",
            "empty/README": "nothing",
        },
    )
    assert renderer.channels("full") == ["email", "sms", "push"]
    assert renderer.channels("no_html") == ["email"]
    assert renderer.channels("html_only") == []
    assert renderer.channels("half_push") == ["sms"]
    assert renderer.channels("empty") == []


def test_email_without_an_html_file_renders_subject_and_text_only(tmp_path: Path) -> None:
    renderer = make_templates(
        tmp_path, {"greet/email.subject.j2": "S {{ n }}", "greet/email.txt.j2": "T {{ n }}"}
    )
    assert renderer.render("greet", "email", {"n": 1}) == {"subject": "S 1", "text": "T 1"}


# -- check_template and variables -----------------------------------------------------------


def test_check_template_reports_a_syntax_error_with_file_and_line(tmp_path: Path) -> None:
    renderer = make_templates(
        tmp_path,
        {
            "greet/email.subject.j2": "Hi",
            "greet/email.txt.j2": "line one\nline two\n{% if name %}unclosed\n",
        },
    )
    problems = check_template(renderer, "greet")
    assert len(problems) == 1
    assert problems[0].startswith("greet/email.txt.j2:")
    line = int(problems[0].split(":")[1])
    assert line in (3, 4)


def test_check_template_reports_a_syntax_error_in_a_locale_file(tmp_path: Path) -> None:
    renderer = make_templates(tmp_path, {**LOCALIZED, "greet/de/sms.txt.j2": "ok\n{{ name }"})
    problems = check_template(renderer, "greet")
    assert [p.split(":")[:2] for p in problems] == [["greet/de/sms.txt.j2", "2"]]


def test_check_template_reports_a_half_present_channel(tmp_path: Path) -> None:
    renderer = make_templates(tmp_path, {"greet/push.title.j2": "t", "greet/sms.txt.j2": "s"})
    problems = check_template(renderer, "greet")
    assert len(problems) == 1
    assert "push.body.j2" in problems[0]
    assert "push" in problems[0]


def test_check_template_finds_nothing_wrong_with_a_sound_template(tmp_path: Path) -> None:
    renderer = make_templates(tmp_path, {**EMAIL, **LOCALIZED})
    assert check_template(renderer, "greet") == []


def test_a_syntax_error_at_render_time_is_a_template_error_with_file_and_line(tmp_path: Path) -> None:
    renderer = make_templates(tmp_path, {"greet/sms.txt.j2": "a\n{% for x in %}"})
    with pytest.raises(TemplateError) as caught:
        renderer.render("greet", "sms", {})
    assert caught.value.field == "template"
    assert "greet/sms.txt.j2:2" in str(caught.value)


def test_variables_include_those_used_in_layouts(tmp_path: Path) -> None:
    renderer = make_templates(
        tmp_path,
        {
            "_layouts/base.txt.j2": "{% block content %}{% endblock %} {{ company }} {{ unsubscribe_url }}",
            "greet/email.subject.j2": "Hi {{ name }}",
            "greet/email.txt.j2": '{% extends "_layouts/base.txt.j2" %}'
            "{% block content %}{{ code }}{% endblock %}",
        },
    )
    assert variables(renderer, "greet", "email") == {"name", "code", "company", "unsubscribe_url"}


def test_variables_of_the_repo_templates() -> None:
    renderer = Renderer(REPO_TEMPLATES)
    assert variables(renderer, "welcome", "email") == {"name"}
    assert variables(renderer, "password_reset", "sms") == {"code", "expires_minutes"}
    assert {"name", "order_id", "carrier", "tracking_number"} <= variables(renderer, "order_shipped", "email")


# -- the repo's templates ------------------------------------------------------------------

SAMPLE_DATA: dict[str, dict[str, Any]] = {
    "welcome": {"name": "Ada"},
    "password_reset": {
        "name": "Grace",
        "code": "493021",
        "expires_minutes": 15,
        "reset_url": "https://example.com/reset?t=abc&u=grace",
    },
    "order_shipped": {
        "name": "Ada",
        "order_id": "A-1001",
        "carrier": "DHL",
        "tracking_number": "JD0140",
        "items": [{"quantity": 2, "title": "Notebook"}],
    },
}


def test_the_repo_has_the_three_sample_templates_with_every_channel() -> None:
    renderer = Renderer(REPO_TEMPLATES)
    assert set(SAMPLE_DATA) <= set(renderer.names())
    for name in SAMPLE_DATA:
        assert renderer.channels(name) == ["email", "sms", "push", "webhook"]
        assert check_template(renderer, name) == []


@pytest.mark.parametrize("name", sorted(SAMPLE_DATA))
@pytest.mark.parametrize("channel", ["email", "sms", "push", "webhook"])
def test_every_sample_template_renders_every_channel(name: str, channel: str) -> None:
    rendered = Renderer(REPO_TEMPLATES).render(name, channel, SAMPLE_DATA[name])
    expected = {
        "email": {"subject", "text", "html"},
        "sms": {"body"},
        "push": {"title", "body"},
        "webhook": {"body"},
    }[channel]
    if channel == "webhook":
        assert check_body(rendered) is None, rendered["body"]
    assert set(rendered) == expected
    assert all(text.strip() for text in rendered.values())
    for part in ("subject", "title"):
        if part in rendered:
            assert "\n" not in rendered[part]


def test_the_sample_templates_carry_their_data() -> None:
    renderer = Renderer(REPO_TEMPLATES)
    reset = renderer.render("password_reset", "email", SAMPLE_DATA["password_reset"])
    assert "https://example.com/reset?t=abc&u=grace" in reset["text"]
    assert 'href="https://example.com/reset?t=abc&amp;u=grace"' in reset["html"]
    assert "493021" in renderer.render("password_reset", "sms", SAMPLE_DATA["password_reset"])["body"]
    shipped = renderer.render("order_shipped", "email", SAMPLE_DATA["order_shipped"])
    assert shipped["subject"] == "Your order A-1001 has shipped"
    assert "2 x Notebook" in shipped["text"]
    assert "account with us" in shipped["text"]  # the shared layout's footer
    welcome = renderer.render("welcome", "push", SAMPLE_DATA["welcome"])
    assert welcome == {"title": "Welcome, Ada!", "body": "Your account is ready."}


def test_the_webhook_bodies_are_json_of_the_data_whatever_it_holds() -> None:
    renderer = Renderer(REPO_TEMPLATES)
    shipped = json.loads(renderer.render("order_shipped", "webhook", SAMPLE_DATA["order_shipped"])["body"])
    assert shipped == {
        "event": "order.shipped",
        "order_id": "A-1001",
        "carrier": "DHL",
        "tracking_number": "JD0140",
        "items": [{"quantity": 2, "title": "Notebook"}],
    }
    hostile = {"name": '"}, "admin": true, "x": {"', "reset_url": "</script>\u2028", "expires_minutes": 1}
    body = renderer.render("password_reset", "webhook", hostile)["body"]
    assert json.loads(body)["name"] == hostile["name"]
    assert "admin" not in json.loads(body)


def test_the_order_shipped_items_are_optional() -> None:
    data = {k: v for k, v in SAMPLE_DATA["order_shipped"].items() if k != "items"}
    rendered = Renderer(REPO_TEMPLATES).render("order_shipped", "email", data)
    assert "A-1001" in rendered["text"]


def test_the_welcome_template_speaks_german_in_every_part() -> None:
    renderer = Renderer(REPO_TEMPLATES)
    for locale in ("de", "de-AT", "de_CH"):
        rendered = renderer.render("welcome", "email", {"name": "Jonas"}, locale)
        assert rendered["subject"] == "Willkommen, Jonas!"
        assert "Hallo Jonas" in rendered["text"]
        assert "Konto bei uns" in rendered["text"]
        assert "Hallo Jonas" in rendered["html"] and "Hello" not in rendered["html"]
    assert renderer.render("welcome", "sms", {"name": "Jonas"}, "de")["body"].startswith("Willkommen")
    assert renderer.render("welcome", "sms", {"name": "Jonas"}, "fr")["body"].startswith("Welcome")


def test_a_channels_parts_come_from_one_locale_folder_never_a_mix(tmp_path: Path) -> None:
    """Before: a German subject and text with the English HTML part (issue 17 item 14)."""
    (tmp_path / "hello" / "de").mkdir(parents=True)
    for part, text in {"subject": "Hi", "txt": "Hello", "html": "<p>Hello</p>"}.items():
        (tmp_path / "hello" / f"email.{part}.j2").write_text(text)
    (tmp_path / "hello" / "de" / "email.subject.j2").write_text("Hallo")
    (tmp_path / "hello" / "de" / "email.txt.j2").write_text("Hallo Welt")
    (tmp_path / "hello" / "fr").mkdir()
    (tmp_path / "hello" / "fr" / "email.subject.j2").write_text("Salut")  # half a channel
    renderer = Renderer(tmp_path)

    assert renderer.render("hello", "email", {}, "de-AT") == {"subject": "Hallo", "text": "Hallo Welt"}
    assert renderer.render("hello", "email", {}, "fr") == {
        "subject": "Hi",
        "text": "Hello",
        "html": "<p>Hello</p>",
    }
    assert check_template(renderer, "hello") == [
        "hello/fr/: has email.subject.j2 but lacks email.txt.j2, so its email message is not in fr: "
        "each channel's parts come from one folder"
    ]


def test_the_url_filter_passes_http_links_escaped_and_refuses_others(tmp_path: Path) -> None:
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "email.subject.j2").write_text("Hi")
    (tmp_path / "linked" / "email.txt.j2").write_text("{{ link | url }}")
    (tmp_path / "linked" / "email.html.j2").write_text('<a href="{{ link | url }}">go</a>')
    renderer = Renderer(tmp_path)

    rendered = renderer.render("linked", "email", {"link": ' https://example.com/?a=1&b="2" '})
    assert rendered["html"] == '<a href="https://example.com/?a=1&amp;b=&#34;2&#34;">go</a>'
    assert rendered["text"] == 'https://example.com/?a=1&b="2"'
    with pytest.raises(
        TemplateError, match=r"^data: linked/email.txt.j2: url: not an absolute http\(s\) URL"
    ):
        renderer.render("linked", "email", {"link": "java\tscript:alert(1)"})
    with pytest.raises(TemplateError, match="url: must be a string, not int"):
        renderer.render("linked", "email", {"link": 7})
