"""docker-compose.yml agrees with the settings class and the CLIs: services, commands,
environment variables, volumes, the GPU reservation, the Dockerfile."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _env_value(v: object) -> str:
    s = str(v)
    m = re.fullmatch(r"\$\{(\w+)(:?[?-])[^}]*\}", s)
    if m:  # ${VAR:?message} -> a value that passes validation
        return "t" * 32 if "TOKEN" in m.group(1) else "x"
    return s


def test_services_and_volumes(compose: dict) -> None:
    services = compose["services"]
    assert {"redis", "api", "worker"} <= set(services)
    redis = services["redis"]
    cmd = redis["command"]
    cmd = shlex.split(cmd) if isinstance(cmd, str) else cmd
    assert cmd[cmd.index("--appendonly") + 1] == "yes"  # AOF: results are durable
    assert any(v.endswith(":/data") for v in redis["volumes"])
    for name in ("api", "worker"):
        for v in services[name]["volumes"]:
            vol = v.split(":")[0]
            assert vol in compose["volumes"], vol
    mounts = {v.split(":")[1] for v in services["worker"]["volumes"]}
    assert {"/data", "/hf-cache"} <= mounts
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] for d in devices)


def test_commands_parse_with_the_real_clis(compose: dict) -> None:
    from patchaudit.api.serve import build_parser as serve_parser
    from patchaudit.worker.cli import build_parser as worker_parser

    api = compose["services"]["api"]["command"]
    worker = compose["services"]["worker"]["command"]
    assert api[:2] == ["patchaudit", "serve"] and worker[:2] == ["patchaudit", "worker"]
    a = serve_parser().parse_args(api[2:])
    worker_parser().parse_args(worker[2:])
    published = [p for p in compose["services"]["api"]["ports"]]
    assert any(p.endswith(f":{a.port}") for p in published)
    assert all(p.startswith("127.0.0.1:") for p in published)


def test_environment_matches_the_settings_class(compose: dict) -> None:
    from patchaudit.settings import Settings

    fields = {f"PATCHAUDIT_{n.upper()}" for n in Settings.model_fields}
    for name in ("api", "worker"):
        env = compose["services"][name]["environment"]
        for key in env:
            if key.startswith("PATCHAUDIT_"):
                assert key in fields, f"{name}: {key} is not a setting"
        values = {k: _env_value(v) for k, v in env.items()}
        settings = Settings(
            **{
                k.removeprefix("PATCHAUDIT_").lower(): v
                for k, v in values.items()
                if k.startswith("PATCHAUDIT_")
            }
        )  # validates: e.g. the api binds 0.0.0.0 and so must have a token
        assert settings.redis_url == "redis://redis:6379/0"
        assert str(settings.data_dir) == "/data"
    api_cmd = compose["services"]["api"]["command"]
    host = api_cmd[api_cmd.index("--host") + 1]
    Settings(host=host, api_token="t" * 32)
    with pytest.raises(ValueError):
        Settings(host=host)  # without the token compose sets, the api would be refused
    assert ":?" in str(compose["services"]["api"]["environment"]["PATCHAUDIT_API_TOKEN"])


def test_dockerfile_matches(compose: dict) -> None:
    text = (ROOT / "backend" / "Dockerfile").read_text()
    assert "PATCHAUDIT_FRONTEND_DIR=/app/frontend" in text and "COPY frontend" in text
    assert re.search(r"^USER \w+", text, re.M), "runs as a non-root user"
    for name in ("api", "worker"):
        assert compose["services"][name]["build"]["dockerfile"] == "backend/Dockerfile"
