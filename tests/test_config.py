"""Settings: the example file documents every option; bad values give one clear line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from gateway.config import ConfigError, load_settings
from tests.support import ShippedSettings as Settings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.toml"


def documented_keys() -> dict[str, set[str]]:
    """Keys written as `# key = value` (or `key = value`) under each [section] of the example."""
    keys: dict[str, set[str]] = {"": set()}
    section = ""
    for line in EXAMPLE.read_text().splitlines():
        header = re.match(r"^\[([a-z_.]+)\]$", line.strip())
        if header:
            section = header.group(1)
            keys.setdefault(section, set())
            continue
        match = re.match(r"^#?\s?([a-z_]+) = ", line)
        if match:
            keys.setdefault(section, set()).add(match.group(1))
    return keys


def test_every_option_is_documented_in_the_example():
    keys = documented_keys()
    missing = []
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for sub, sub_field in annotation.model_fields.items():
                if sub == "providers":
                    continue  # documented as [integrations.providers.<name>] tables
                nested = sub_field.annotation
                if isinstance(nested, type) and issubclass(nested, BaseModel):  # a [section.sub] table
                    documented = keys.get(f"{name}.{sub}", set())
                    missing += [f"{name}.{sub}.{key}" for key in nested.model_fields if key not in documented]
                elif sub not in keys.get(name, set()):
                    missing.append(f"{name}.{sub}")
        elif name not in keys[""]:
            missing.append(name)
    assert not missing, f"options missing from config.example.toml: {missing}"


def test_example_defaults_are_valid_values(tmp_path):
    """Uncomment every documented default: the result must load."""
    text = re.sub(r"^# ([a-z_]+ = )", r"\1", EXAMPLE.read_text(), flags=re.MULTILINE)
    text = re.sub(r"^\[integrations\.providers\..*", "", text, flags=re.MULTILINE)
    provider_keys = re.compile(r"^(client_id|client_secret|scopes|fields) =")
    text = "\n".join(line for line in text.splitlines() if not provider_keys.match(line))
    path = tmp_path / "all.toml"
    path.write_text(text)
    tomllib.loads(text)
    settings = load_settings(str(path))
    assert settings.server.port == 8000


def test_bad_value_names_the_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[dispatch]\nhandler_timeout = 'soon'\n")
    with pytest.raises(ConfigError) as info:
        load_settings(str(path))
    message = str(info.value)
    assert "dispatch.handler_timeout" in message and "CHATGATE_DISPATCH__HANDLER_TIMEOUT" in message
    assert "\n" not in message


def test_unknown_key_is_refused(tmp_path):
    path = tmp_path / "typo.toml"
    path.write_text("[server]\nprot = 80\n")
    with pytest.raises(ConfigError, match=r"unknown option 'server\.prot'"):
        load_settings(str(path))


def test_toml_syntax_error_is_one_line(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[server\nport = 1\n")
    with pytest.raises(ConfigError) as info:
        load_settings(str(path))
    assert "broken.toml" in str(info.value)


def test_environment_overrides_file(tmp_path, monkeypatch):
    path = tmp_path / "c.toml"
    path.write_text("[server]\nport = 9000\n[dispatch]\nhistory_limit = 3\n")
    monkeypatch.setenv("PORT", "9100")
    monkeypatch.setenv("CHATGATE_DISPATCH__HISTORY_LIMIT", "7")
    monkeypatch.setenv("DATABASE_URL", "postgres://u:p@db/app")
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "123:abc")
    settings = load_settings(str(path))
    assert settings.server.port == 9100
    assert settings.dispatch.history_limit == 7
    assert settings.database.url == "postgresql+asyncpg://u:p@db/app"
    assert settings.telegram.bot_token == "123:abc"


def test_unsupported_database_url(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "mysql://x/y")
    with pytest.raises(ConfigError, match=r"database\.url"):
        load_settings()


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings("/nonexistent/chatgate.toml")
    with pytest.raises(ConfigError, match="is not a file"):  # it used to be skipped: defaults ran
        load_settings(str(tmp_path))


def test_generated_secret_key_is_stable(tmp_path):
    settings = load_settings(None, data_dir=str(tmp_path))
    first = settings.resolved_secret_key()
    assert first == load_settings(None, data_dir=str(tmp_path)).resolved_secret_key()
    assert (tmp_path / "secret.key").stat().st_mode & 0o077 == 0


def test_cli_bad_config_exits_2_with_one_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[telegram]\nprivate_edit_interval = 'x'\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "run", str(ROOT / "examples" / "echo.py"), "--config", str(path)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "telegram.private_edit_interval" in lines[0]


def test_an_environment_list_that_is_not_json_names_the_variable(monkeypatch):
    monkeypatch.setenv("CHATGATE_WEB__API_KEYS", "key-one")
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith("config error: web.api_keys: CHATGATE_WEB__API_KEYS must be a JSON list")
    assert "\n" not in message and "key-one" not in message  # the value may be a secret
    monkeypatch.setenv("CHATGATE_WEB__API_KEYS", '["key-one"]')
    assert load_settings().web.api_keys == ["key-one"]


def test_a_section_variable_that_is_not_json_names_the_variable(monkeypatch):
    monkeypatch.setenv("CHATGATE_DISPATCH", "{oops")
    with pytest.raises(ConfigError, match=r"^config error: dispatch: CHATGATE_DISPATCH must be a JSON object"):
        load_settings()


def test_a_bad_conventional_variable_is_named(monkeypatch):
    monkeypatch.setenv("PORT", "eighty")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "server.port" in str(info.value) and str(info.value).endswith("or PORT")


def test_cli_bad_environment_value_exits_2_with_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "run", str(ROOT / "examples" / "echo.py")],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**os.environ, "CHATGATE_WEB__ALLOWED_ORIGINS": "https://a.example"},
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "CHATGATE_WEB__ALLOWED_ORIGINS" in lines[0] and "web.allowed_origins" in lines[0]


def test_the_example_shows_the_real_defaults(tmp_path):
    """`# key = value` lines are the defaults ("" and examples stand for options unset by default)."""
    text = re.sub(r"^# ([a-z_]+ = )", r"\1", EXAMPLE.read_text(), flags=re.MULTILINE)
    text = text.split("[integrations.providers.", 1)[0]  # provider tables are examples, not defaults
    documented = tomllib.loads(text)
    defaults = {  # from the models themselves: the environment (DATABASE_URL in CI...) must not count
        name: field.default_factory().model_dump() if field.default_factory else field.default
        for name, field in Settings.model_fields.items()
    }
    wrong = []
    for section, values in documented.items():
        if not isinstance(values, dict):
            values, real = {section: values}, defaults
        else:
            real = defaults[section]
        for key, value in values.items():
            if real[key] is None:
                continue  # unset by default; the example shows a placeholder
            if real[key] != value:
                wrong.append(f"{section}.{key}: example {value!r}, default {real[key]!r}")
    assert not wrong, wrong


def test_public_url_must_be_absolute(monkeypatch):
    monkeypatch.setenv("CHATGATE_SERVER__PUBLIC_URL", "bot.example.com")
    with pytest.raises(ConfigError, match=r"^config error: server\.public_url: .*absolute http"):
        load_settings()
    monkeypatch.setenv("CHATGATE_SERVER__PUBLIC_URL", "https://bot.example.com/")
    assert load_settings().server.base_url() == "https://bot.example.com"


@pytest.mark.parametrize(("variable", "value", "key"), [
    ("CHATGATE_REDIS__URL", "localhost:6379", "redis.url"),
    ("REDIS_URL", "http://cache:6379", "redis.url"),
    ("CHATGATE_SCHEDULER__TIMEZONE", "Mars/Olympus_Mons", "scheduler.timezone"),
    ("CHATGATE_TELEGRAM__API_URL", "api.telegram.org", "telegram.api_url"),
    ("CHATGATE_TELEGRAM__WEBHOOK_PATH", "telegram/webhook", "telegram.webhook_path"),
    ("CHATGATE_SLACK__API_URL", "slack.com/api", "slack.api_url"),
    ("CHATGATE_SLACK__EVENTS_PATH", "slack events", "slack.events_path"),
    ("CHATGATE_SLACK__SLASH_COMMAND", "chatgate", "slack.slash_command"),
    ("CHATGATE_DISPATCH__HISTORY_PREFETCH", "sometimes", "dispatch.history_prefetch"),
])
def test_values_that_failed_later_are_refused_at_load(monkeypatch, variable, value, key):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=rf"^config error: {re.escape(key)}: "):
        load_settings()


def test_a_short_secret_key_is_refused_in_one_line_without_its_value(tmp_path, monkeypatch):
    with pytest.raises(ConfigError) as refused:
        load_settings(None, data_dir=str(tmp_path), secret_key="too-short-but-secret")
    message = str(refused.value)
    assert "secret_key" in message and "32 bytes" in message and "\n" not in message
    assert "too-short-but-secret" not in message
    monkeypatch.setenv("CHATGATE_SECRET_KEY", "x" * 31)
    with pytest.raises(ConfigError, match="CHATGATE_SECRET_KEY"):
        load_settings(None, data_dir=str(tmp_path))
    monkeypatch.setenv("CHATGATE_SECRET_KEY", "x" * 32)
    assert load_settings(None, data_dir=str(tmp_path)).resolved_secret_key() == "x" * 32


def test_a_short_generated_key_file_is_refused(tmp_path):
    (tmp_path / "secret.key").write_text("short\n")
    with pytest.raises(ConfigError, match=r"secret\.key holds a key shorter than 32 bytes"):
        load_settings(None, data_dir=str(tmp_path)).resolved_secret_key()


def test_web_limits_take_rates_in_the_limits_notation():
    settings = load_settings(None, web={"limits": {"messages_per_visitor": "5 per minute", "uploads_per_ip": 0}})
    assert settings.web.limits.messages_per_visitor == "5 per minute"
    with pytest.raises(ConfigError, match=r"web\.limits\.new_sessions_per_ip: .*30/minute"):
        load_settings(None, web={"limits": {"new_sessions_per_ip": "lots"}})


def test_a_rate_of_0_turns_the_limit_off_as_the_config_example_says():
    """config.example.toml: '"" or 0 turns a limit off', for rates as for counts (the
    environment gives a rate of 0 as the text "0")."""
    for off in ("", "0", " 0 ", 0):
        settings = load_settings(None, web={"limits": {"messages_per_ip": off}})
        assert settings.web.limits.messages_per_ip == ""
