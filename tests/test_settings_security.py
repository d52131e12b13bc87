"""Production defaults: DEBUG, SECRET_KEY, HTTPS settings, secrets on error pages.

Each runs the settings in a fresh process with the environment a deployer
would give, as `manage.py` would see it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from django.test import RequestFactory, override_settings
from django.views.debug import ExceptionReporter

ROOT = Path(__file__).resolve().parent.parent
STRONG_KEY = "k3y-" + "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOP"


def deployer_environment() -> dict[str, str]:
    """This process's environment without what tests/environment.py set for the tests."""
    ours = ("DEBUG", "SECRET_KEY", "SECURE_", "SESSION_COOKIE_", "CSRF_COOKIE_")
    return {k: v for k, v in os.environ.items() if not k.startswith(ours)}


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**deployer_environment(), "DJANGO_SETTINGS_MODULE": "chatsite.settings", **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def settings_seen(*names: str, **env: str) -> dict:
    code = (
        "import json, chatsite.settings as s; "
        f"print(json.dumps({{n: getattr(s, n) for n in {list(names)!r}}}))"
    )
    result = run_python(code, **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_debug_is_off_unless_asked_for():
    assert settings_seen("DEBUG", SECRET_KEY=STRONG_KEY) == {"DEBUG": False}
    assert settings_seen("DEBUG", DEBUG="true") == {"DEBUG": True}


def test_make_run_turns_debug_on():
    makefile = (ROOT / "Makefile").read_text()
    run_recipe = makefile.split("\nrun:", 1)[1].split("\n\n", 1)[0]
    assert "DEBUG=true $(PY) manage.py runserver" in run_recipe


def test_without_debug_no_secret_key_refuses_to_start_and_says_how_to_make_one():
    result = run_python("import chatsite.settings")

    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr
    assert "secrets.token_urlsafe(50)" in result.stderr


def test_without_debug_a_weak_secret_key_refuses_to_start():
    for weak in ("x", "a" * 60, "insecure-local-development-key-do-not-deploy"):
        result = run_python("import chatsite.settings", SECRET_KEY=weak)
        assert result.returncode != 0, weak
        assert "secrets.token_urlsafe(50)" in result.stderr


def test_https_settings_default_to_production_and_each_has_its_own_variable():
    names = (
        "SECURE_SSL_REDIRECT",
        "SESSION_COOKIE_SECURE",
        "CSRF_COOKIE_SECURE",
        "SECURE_HSTS_SECONDS",
        "SECURE_PROXY_SSL_HEADER",
    )
    production = settings_seen(*names, SECRET_KEY=STRONG_KEY)
    assert production == {
        "SECURE_SSL_REDIRECT": True,
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SECURE_HSTS_SECONDS": 31536000,
        "SECURE_PROXY_SSL_HEADER": None,
    }
    plain_http = settings_seen(
        *names,
        SECRET_KEY=STRONG_KEY,
        SECURE_SSL_REDIRECT="false",
        SESSION_COOKIE_SECURE="false",
        CSRF_COOKIE_SECURE="false",
        SECURE_HSTS_SECONDS="0",
        SECURE_PROXY_SSL_HEADER="HTTP_X_FORWARDED_PROTO,https",
    )
    assert plain_http == {
        "SECURE_SSL_REDIRECT": False,
        "SESSION_COOKIE_SECURE": False,
        "CSRF_COOKIE_SECURE": False,
        "SECURE_HSTS_SECONDS": 0,
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"],
    }


def readme_production_environment() -> str:
    """The `export` lines of the README's "Running it for real" block."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Running it for real", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "no sh block in README's Running it for real"
    exports = [line for line in block.group(1).splitlines() if line.startswith("export ")]
    assert exports
    return "\n".join(exports)


def test_check_deploy_is_clean_under_the_readmes_production_environment(tmp_path):
    exports = readme_production_environment()
    # The README reads the key from a file made once; make that file here.
    key_file = tmp_path / "secret_key"
    key_file.write_text(
        subprocess.run(
            ["python3", "-c", "import secrets; print(secrets.token_urlsafe(50))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    exports = exports.replace("/etc/chat/secret_key", str(key_file))
    result = subprocess.run(
        ["bash", "-c", f"{exports}\nexec {sys.executable} manage.py check --deploy"],
        env=deployer_environment(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # What the README says it prints: this line and nothing else (no banner, no INFO).
    assert (result.stdout, result.stderr) == (CLEAN_CHECK, ""), output
    assert CLEAN_CHECK.strip() in readme_section("## Running it for real")


CLEAN_CHECK = "System check identified no issues (0 silenced).\n"


def readme_section(heading: str) -> str:
    readme = (ROOT / "README.md").read_text()
    level = heading.split(" ", 1)[0]
    return readme.split(heading + "\n", 1)[1].split(f"\n{level} ", 1)[0]


def readme_trial_block() -> str:
    """The sh block of the README's "Try the production settings on this machine"."""
    section = readme_section("### Try the production settings on this machine")
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "no sh block in README's Try the production settings on this machine"
    return block.group(1)


def trial_environment(tmp_path: Path) -> dict[str, str]:
    """A deployer's shell with nothing exported yet: one process, a fresh database."""
    env = deployer_environment()
    for name in ("REDIS_URL", "REDIS_PREFIX", "DATABASE_URL"):
        env.pop(name, None)
    env["STATIC_ROOT"] = str(tmp_path / "static")
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    return env


def test_check_deploy_under_the_trial_block_names_exactly_the_https_settings_it_turns_off(
    tmp_path,
):
    exports = "\n".join(
        line for line in readme_trial_block().splitlines() if line.startswith("export ")
    )
    result = subprocess.run(
        ["bash", "-c", f"{exports}\nexec {sys.executable} manage.py check --deploy"],
        env=trial_environment(tmp_path),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    warned = set(re.findall(r"\(([a-z_]+\.[WE]\d{3})\)", output))
    assert warned == {
        "security.W005",
        "security.W008",
        "security.W012",
        "security.W016",
        "security.W021",
    }, output
    assert all(
        each in readme_section("### Try the production settings on this machine") for each in warned
    )


def test_the_trial_block_serves_sign_up_and_the_admin_over_plain_http(tmp_path):
    """The README's commands as written, on a free port, the admin user made without a prompt."""
    from tests.servers import HttpSession, Worker, free_port

    port = free_port()
    lines = readme_trial_block().replace(".venv/bin/python", sys.executable)
    *setup, serve = [line for line in lines.splitlines() if line.strip()]
    assert serve.startswith(".venv/bin/daphne ") and "port=8000:interface=127.0.0.1" in serve
    setup = [
        line + " --noinput --username admin --email admin@example.com"
        if line.endswith("manage.py createsuperuser")
        else line
        for line in setup
    ]
    env = trial_environment(tmp_path)
    env["DJANGO_SUPERUSER_PASSWORD"] = "an-Admin-passw0rd"
    exports = "\n".join(line for line in setup if line.startswith("export "))
    script = "set -e\n" + "\n".join(setup) + "\nenv -0 >" + str(tmp_path / "env")
    done = subprocess.run(
        ["bash", "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert exports
    served = dict(
        each.split("=", 1) for each in (tmp_path / "env").read_text().split("\0") if "=" in each
    )
    worker = Worker(served, name="trial", port=port)
    try:
        worker.start()
        visitor = HttpSession(worker.base_url)
        status, _ = visitor.get("/accounts/login/")
        assert status == 200
        visitor.signup("trier")
        admin = HttpSession(worker.base_url)
        admin.post(
            "/admin/login/?next=/admin/", {"username": "admin", "password": "an-Admin-passw0rd"}
        )
        status, page = admin.get("/admin/")
        assert status == 200 and "Site administration" in page, page[:500]
    finally:
        worker.stop()


def test_debug_page_and_error_report_mask_url_passwords():
    database_url = "postgres://chat:db-PASSWORD-1@db.example:5432/chat"
    redis_url = "redis://:redis-PASSWORD-2@cache.example:6379/0"
    layers = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": redis_url}]},
        }
    }
    with override_settings(
        DEBUG=True, DATABASE_URL=database_url, REDIS_URL=redis_url, CHANNEL_LAYERS=layers
    ):
        request = RequestFactory().get("/boom")
        try:
            connect_to = redis_url  # a local variable of the failing frame
            raise ConnectionError(f"cannot connect to {connect_to.split('@')[1]}")
        except ConnectionError:
            reporter = ExceptionReporter(request, *sys.exc_info())
            html = reporter.get_traceback_html()
            text = reporter.get_traceback_text()

    for page in (html, text):
        assert "db.example" in page and "cache.example" in page  # the URLs are there...
        assert "db-PASSWORD-1" not in page  # ...without their passwords
        assert "redis-PASSWORD-2" not in page


def test_manage_py_prints_only_a_problem_on_a_clean_configuration():
    """No django-axes banner, no list of fast paths: a clean check is Django's one line."""
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        env={**deployer_environment(), "DEBUG": "true"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == (CLEAN_CHECK, "")
