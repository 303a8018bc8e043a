"""The wheel installs only `notify`; workers/ (what an operator runs) stays in the repository."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "notify", "workers", "templates", "tests", "benchmarks")
IGNORED = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "results")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """The project's wheel, built from a copy so the build leaves nothing in the work tree.

    Built with pip's build isolation: setuptools comes from the configured
    package index (the venv's own setuptools may be older than `license = "MIT"` needs).
    """
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=IGNORED)
        else:
            shutil.copy2(REPO / name, source / name)
    completed = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    (built,) = out.glob("*.whl")
    return zipfile.ZipFile(built)


@pytest.mark.timeout(60)
def test_the_wheel_holds_only_the_notify_package(wheel: zipfile.ZipFile) -> None:
    top = {name.split("/")[0] for name in wheel.namelist()}

    assert top == {"notify", "notify_celery_delivery-0.1.0.dist-info"}
    assert "notify/worker/app.py" in wheel.namelist()
    assert "notify/cli/__init__.py" in wheel.namelist()
    # `notify db upgrade` runs from an installed wheel: Alembic's environment and every revision
    for name in ("env.py", "script.py.mako", "versions/0001_baseline.py", "versions/0002_handed_over_at.py"):
        assert f"notify/store/migrations/{name}" in wheel.namelist()


@pytest.mark.timeout(60)
def test_templates_tests_benchmarks_and_workers_stay_out(wheel: zipfile.ZipFile) -> None:
    for name in wheel.namelist():
        assert not name.startswith(("templates/", "tests/", "benchmarks/", "workers/")), name
        assert "/tests/" not in name and "/benchmarks/" not in name, name


@pytest.mark.timeout(60)
def test_the_console_script_is_notify_cli_main(wheel: zipfile.ZipFile) -> None:
    entry_points = wheel.read("notify_celery_delivery-0.1.0.dist-info/entry_points.txt").decode()

    assert "[console_scripts]\nnotify = notify.cli:main" in entry_points


# Security fixes notify relies on: no install may resolve to a release without them.
SECURITY_FLOORS = {"jinja2": "3.1.6", "requests": "2.32.4", "idna": "3.7", "urllib3": "2.5"}


def test_dependency_floors_are_at_or_past_the_security_fixes() -> None:
    import tomllib

    from packaging.requirements import Requirement
    from packaging.version import Version

    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
    floors: dict[str, Version] = {}
    for requirement in map(Requirement, project["dependencies"]):
        lows = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==", "~=")]
        floors[requirement.name.lower()] = max(lows) if lows else Version("0")
    for name, fixed in SECURITY_FLOORS.items():
        assert name in floors, f"{name} is not a declared dependency"
        assert floors[name] >= Version(fixed), f"{name} may resolve below {fixed}"


@pytest.mark.timeout(60)
def test_the_wheel_carries_the_mit_licence_and_one_version(wheel: zipfile.ZipFile) -> None:
    import tomllib

    import notify

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    licences = [n for n in wheel.namelist() if n.split("/")[-1] == "LICENSE"]
    metadata = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))

    assert licences and "MIT License" in wheel.read(licences[0]).decode()
    assert f"Version: {declared}" in wheel.read(metadata).decode()
    assert notify.__version__ == declared  # from the installed metadata: pyproject.toml is the one place


@pytest.mark.timeout(60)
def test_a_plain_install_brings_the_demos_mail_catcher_and_sample_templates(wheel: zipfile.ZipFile) -> None:
    metadata = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    required = [
        line for line in wheel.read(metadata).decode().splitlines() if line.startswith("Requires-Dist:")
    ]
    assert any(line.startswith("Requires-Dist: aiosmtpd") and "extra ==" not in line for line in required)
    for name in (
        "welcome/email.html.j2",
        "welcome/de/sms.txt.j2",
        "password_reset/sms.txt.j2",
        "order_shipped",
    ):
        assert any(n.startswith(f"notify/sample_templates/{name}") for n in wheel.namelist()), name


@pytest.mark.timeout(180)
def test_notify_demo_runs_from_the_installed_wheel_in_an_empty_folder(
    wheel: zipfile.ZipFile, tmp_path: Path
) -> None:
    """After `pip install notify-celery-delivery`, outside any checkout: no templates/ folder there."""
    site, folder = tmp_path / "site", tmp_path / "elsewhere"
    folder.mkdir()
    installed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(site),
            str(wheel.filename),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr
    environ = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "NOTIFY_HOME": str(folder / ".notify")}

    demo = subprocess.run(
        [sys.executable, "-m", "notify.cli", "demo", "--timeout", "60"],
        env=environ,
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=150,
    )

    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert f"templates: the package's samples, {site / 'notify' / 'sample_templates'}" in demo.stdout
    assert demo.stdout.count("  sent  ") == 11 and demo.stdout.count("  duplicate  ") == 3, demo.stdout


@pytest.mark.timeout(60)
def test_the_wheel_carries_the_console_pages(wheel: zipfile.ZipFile) -> None:
    """`notify web` renders the console from templates inside the package (package data)."""
    shipped = REPO / "notify" / "web" / "console" / "templates"
    pages = sorted(p.name for p in shipped.glob("*.html"))
    assert "base.html" in pages
    for name in pages:
        assert f"notify/web/console/templates/{name}" in wheel.namelist(), name
