"""The service's one settings class (environment prefix ``PATCHAUDIT_``), shared by the API,
``patchaudit serve`` and the workers (it sits below both, so the worker imports downward).

It refuses unsafe combinations at start-up instead of running with them: binding a
non-loopback address without an API token, a short API token, a zero budget or limit.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: Where ``frontend/`` sits in a source checkout: backend/patchaudit -> repo root.
_REPO_ROOT = Path(__file__).resolve().parents[2]

MIN_TOKEN_LENGTH = 16

log = logging.getLogger(__name__)

#: A member's name in the tokens file: letters, digits and ``_ . @ -``, at most 64 characters.
_MEMBER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
#: The owner of everything on a token-less server (every local user is this one client).
LOCAL_MEMBER = "local"


def read_tokens_file(path: Path) -> dict[str, str]:
    """The members of a tokens file: one ``name: token`` per line; blank lines and ``#``
    comments are skipped. Raises ValueError naming the line number (never what it holds: a
    swapped line would put a token where the name goes) when a line is malformed, a name
    repeats, or a token is short or shared by two names."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        if Path(path).stat().st_mode & 0o077:
            log.warning("the tokens file %s is readable by other users: chmod 600 it", path)
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read the tokens file {path}: {e.__class__.__name__}") from None
    members: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, token = (part.strip() for part in line.partition(":"))
        where = f"tokens file {path}, line {n}"
        if not sep or not name or not token:
            raise ValueError(f"{where}: expected 'name: token'")
        if not _MEMBER_NAME.match(name) or name == LOCAL_MEMBER:
            raise ValueError(
                f"{where}: a name is letters, digits or _.@- (at most 64), and not "
                f"{LOCAL_MEMBER!r}"
            )
        if name in members:
            raise ValueError(f"{where}: this name appears twice")
        if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
            raise ValueError(
                f"{where}: the token is shorter than {MIN_TOKEN_LENGTH} characters or holds "
                "spaces: use a random one (`python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'`)"
            )
        if token in members.values():
            raise ValueError(f"{where}: the token is the same as another member's")
        members[name] = token
    return members


def _split_list(value: Any) -> Any:
    """Accept a JSON list or a comma-separated string from the environment."""
    if isinstance(value, str):
        s = value.strip()
        if not s:
            return None
        if s.startswith("["):
            return json.loads(s)
        return [p.strip() for p in s.split(",") if p.strip()]
    return value


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def settings_from_cli(**overrides: Any) -> Settings:
    """Settings with the command line's options (those given) over the environment; invalid
    settings raise ValueError with one readable line per problem."""
    from pydantic import ValidationError

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as e:
        raise ValueError(
            "; ".join(str(err.get("msg", "")).removeprefix("Value error, ") for err in e.errors())
        ) from None


class Settings(BaseSettings):
    """Every knob of ``patchaudit serve`` / ``patchaudit worker`` (env ``PATCHAUDIT_<NAME>``)."""

    model_config = SettingsConfigDict(
        env_prefix="PATCHAUDIT_", extra="ignore", populate_by_name=True, validate_default=True
    )

    # -- where things live --------------------------------------------------------------
    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("PATCHAUDIT_REDIS_URL", "REDIS_URL", "redis_url"),
        description="Redis to use; unset: `patchaudit serve` starts an embedded one.",
    )
    data_dir: Path = Field(
        default=Path.home() / ".patchaudit",
        description="Embedded Redis AOF (redis/) and activation cache (cache/).",
    )
    frontend_dir: Path | None = Field(
        default=None, description="Static front end; default: <repo>/frontend."
    )

    # -- HTTP -----------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    api_token: SecretStr | None = Field(
        default=None,
        description="Required for writes (Authorization: Bearer / X-API-Token) when set. "
        "Mandatory when binding a non-loopback address.",
    )
    tokens_file: Path | None = Field(
        default=None,
        description="Team members (PATCHAUDIT_TOKENS_FILE): one 'name: token' per line. Each "
        "token works like the API token and names its holder: analyses carry their owner, "
        "only the owner cancels or deletes, admission counts each member apart. Keep it 0600.",
    )
    api_token_name: str = Field(
        default="operator",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$",
        description="The member name PATCHAUDIT_API_TOKEN stands for (it is one member).",
    )
    max_body_bytes: int = Field(default=1_000_000, ge=1024, description="Larger bodies: 413.")
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names the server answers to (DNS-rebinding guard); other Host headers "
        "get 400. Loopback names and the bind address are always accepted; '*' accepts any.",
    )

    # -- limits ---------------------------------------------------------------------------
    model_allowlist: Annotated[list[str] | None, NoDecode] = Field(
        default=None,
        description="Model names (or local directories) a request may name, besides bundled "
        "(and the --model / preload models). Default: none. Remote code is never trusted.",
    )
    allow_hub_models: bool = Field(
        default=False,
        description="Accept any model TransformerLens supports (downloads from the Hugging Face "
        "hub on first use). Off by default: only bundled plus PATCHAUDIT_MODEL_ALLOWLIST.",
    )
    max_model_params: int = Field(
        default=3_000_000_000,
        ge=1,
        description="Size cap: a worker refuses a model whose config says it has more "
        "parameters (checked from config.json before any weights are downloaded).",
    )
    max_pairs: int = Field(default=256, ge=1)
    max_tokens: int = Field(default=256, ge=2, description="Tokens per prompt.")
    max_prompt_chars: int = Field(default=4000, ge=16)
    max_hvp_probes: int = Field(default=256, ge=1)
    max_ig_steps: int = Field(default=256, ge=1)
    max_verify_components: int = Field(default=4096, ge=1)

    # -- admission control (per client = API token or address) ---------------------------
    max_job_cost: int = Field(
        default=2_000_000,
        ge=1,
        description="Cost estimate (pair-passes x tokens / 16) above which one job is refused.",
    )
    max_client_jobs: int = Field(
        default=16, ge=1, description="Jobs one client may have queued or running (then 429)."
    )
    max_client_cost: int = Field(
        default=8_000_000, ge=1, description="Summed cost one client may have queued or running."
    )
    max_queued_jobs: int = Field(
        default=1000, ge=1, description="Jobs queued in all (then 429 for everyone)."
    )

    # -- queue and worker -----------------------------------------------------------------
    workers: int = Field(default=1, ge=0, description="Worker processes `serve` starts.")
    default_model: str = "bundled"
    preload_models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    job_timeout_s: int = Field(default=3600, ge=1)
    max_loaded_models: int = Field(default=2, ge=1)
    device: str | None = Field(
        default=None,
        description="Where workers run the models (PATCHAUDIT_DEVICE: cpu, cuda, cuda:1); "
        "default CUDA when present, else the CPU.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="Weights' precision (PATCHAUDIT_DTYPE); auto: bfloat16 on CUDA, float32 on "
        "the CPU. The metric, gradients and second-order terms accumulate in float32.",
    )
    memory_budget_mb: float | None = Field(
        default=None,
        gt=0,
        description="Memory one job's passes may use, in MiB (PATCHAUDIT_MEMORY_BUDGET_MB); "
        "default 60% of the free device memory. A request that cannot fit is refused before "
        "it starts.",
    )
    execution_ttl_s: int = Field(
        default=30,
        ge=2,
        description="A job whose worker stops heart-beating this long is abandoned.",
    )
    maintenance_interval_s: int = Field(default=15, ge=1)
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        description="Torch threads of each worker (PATCHAUDIT_TORCH_THREADS, intra-op; inter-op "
        "at most 2); default the CPU cores shared evenly among PATCHAUDIT_WORKERS workers, so "
        "workers never oversubscribe the cores.",
    )
    interactive_lane: bool = Field(
        default=True,
        description="Each worker serves the interactive queue (verify, drill-down, ...) in a "
        "lane of its own, pausing a long job between two passes (docs/SERVICE.md).",
    )
    worker_ttl_s: int = Field(default=35, ge=16)
    test_job_delay_s: float = Field(
        default=0.0,
        ge=0.0,
        description="TESTS ONLY: seconds the worker sleeps at each phase change (so a test "
        "can kill or cancel a job mid-way). Must stay 0 in production.",
    )

    # -- storage --------------------------------------------------------------------------
    cache_budget_bytes: int = Field(default=2 * 1024**3, ge=1)
    retention_max_age_days: float | None = Field(
        default=None,
        gt=0,
        description="Delete analyses older than this many days (never a queued or running "
        "one); unset: keep them. Pruned by the workers' maintenance tick.",
    )
    retention_max_analyses: int | None = Field(
        default=None,
        ge=1,
        description="Keep at most this many analyses: the oldest finished ones are deleted "
        "first (never a queued or running one); unset: no limit.",
    )
    appendfsync: Literal["always", "everysec", "no"] = "everysec"
    min_free_bytes: int = Field(
        default=64 * 1024**2,
        ge=0,
        description="Below this much free space on the data directory's disk, requests that "
        "store something get 507 (0: no check).",
    )
    log_level: str = "INFO"

    @field_validator("model_allowlist", "preload_models", "allowed_hosts", mode="before")
    @classmethod
    def _lists(cls, v: Any) -> Any:
        v = _split_list(v)
        if v is None:
            return None
        return v

    @field_validator("preload_models", "allowed_hosts", mode="after")
    @classmethod
    def _preload(cls, v: list[str] | None) -> list[str]:
        return list(v or [])

    @field_validator("tokens_file", mode="after")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        # absolute: the workers `serve` starts read the same file whatever their directory
        return None if v is None else v.expanduser().absolute()

    @field_validator("redis_url", "tokens_file", mode="before")
    @classmethod
    def _empty_url(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v

    _members: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Settings:
        token = self.api_token.get_secret_value() if self.api_token else ""
        members = read_tokens_file(self.tokens_file) if self.tokens_file else {}
        if token:
            if self.api_token_name in members:
                raise ValueError(
                    f"PATCHAUDIT_API_TOKEN_NAME {self.api_token_name!r} is also a member in the "
                    "tokens file: give one of them another name"
                )
            if token in members.values():
                raise ValueError("PATCHAUDIT_API_TOKEN is also a member's token in the tokens file")
            members = {self.api_token_name: token, **members}
        self._members = members
        if self.api_token is not None and len(token) < MIN_TOKEN_LENGTH:
            raise ValueError(
                f"PATCHAUDIT_API_TOKEN is shorter than {MIN_TOKEN_LENGTH} characters: use a "
                "random one, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        if not is_loopback(self.host) and not members:
            raise ValueError(
                f"refusing to bind {self.host} without an API token: anyone who reaches it "
                "could start computations. Set PATCHAUDIT_API_TOKEN (or PATCHAUDIT_TOKENS_FILE), "
                "or bind 127.0.0.1."
            )
        if self.worker_ttl_s <= 15:
            raise ValueError("PATCHAUDIT_WORKER_TTL_S must exceed 15 seconds")
        if self.maintenance_interval_s >= self.worker_ttl_s * 10:
            raise ValueError("PATCHAUDIT_MAINTENANCE_INTERVAL_S is far above the worker TTL")
        return self

    # -- derived ----------------------------------------------------------------------------

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def redis_dir(self) -> Path:
        return self.data_dir / "redis"

    @property
    def frontend_path(self) -> Path:
        return Path(self.frontend_dir) if self.frontend_dir else _REPO_ROOT / "frontend"

    @property
    def token(self) -> str | None:
        return self.api_token.get_secret_value() if self.api_token else None

    @property
    def members(self) -> dict[str, str]:
        """Member name -> token: PATCHAUDIT_API_TOKEN (as ``api_token_name``) and the tokens
        file; empty on a token-less server."""
        return dict(self._members)

    @property
    def auth_required(self) -> bool:
        """Whether writes need a member's token (any token is configured)."""
        return bool(self._members)

    @cached_property
    def named_models(self) -> tuple[str, ...]:
        """The models the operator named: the two shipped with the package (bundled, planted:
        no download), the allowlist, the served/preloaded ones."""
        names = [
            "bundled",
            "planted",
            *(self.model_allowlist or []),
            self.default_model,
            *self.preload_models,
        ]
        return tuple(dict.fromkeys(n for n in names if n))

    @cached_property
    def allowed_models(self) -> frozenset[str]:
        if not self.allow_hub_models:
            return frozenset(self.named_models)
        from patchaudit.models import FEATURED, supported_model_names

        return frozenset([*self.named_models, *(n for n, _ in FEATURED), *supported_model_names()])

    @cached_property
    def host_names(self) -> frozenset[str]:
        """Accepted Host header names (lower case, no port); empty set = any (``*``)."""
        if "*" in self.allowed_hosts:
            return frozenset()
        names = {"localhost", "127.0.0.1", "::1", "[::1]", "ip6-localhost"}
        if self.host not in ("0.0.0.0", "::", ""):
            names.add(self.host.lower())
        names.update(h.lower().strip() for h in self.allowed_hosts)
        return frozenset(names)

    def env(self) -> dict[str, str]:
        """These settings as PATCHAUDIT_* variables (for the worker processes `serve` starts)."""
        out: dict[str, str] = {}
        for name, value in self.model_dump(exclude={"api_token"}).items():
            if value is None:
                continue
            if isinstance(value, list):
                out[f"PATCHAUDIT_{name.upper()}"] = json.dumps(value)
            else:
                out[f"PATCHAUDIT_{name.upper()}"] = str(value)
        if self.api_token is not None:
            out["PATCHAUDIT_API_TOKEN"] = self.api_token.get_secret_value()
        return out
