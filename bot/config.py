"""Settings: read once from the environment and `.env`, validated with messages that say
what to fix.

Everything has an embedded default except the Discord token, which only the bot itself needs
(the link server and the admin CLI run without one).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import load_dotenv

from bot.core.blobs import S3Settings, parse_blob_url
from bot.generate import DEFAULT_SIDE, GENERATOR_KINDS, MAX_SIDE, MIN_SIDE

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
ENV_EXAMPLE_HINT = "copy .env.example to .env and put the bot token in DISCORD_TOKEN"


class StartupError(Exception):
    """Veil cannot start, for a reason the operator can fix; the message says how, in a line."""


class ConfigError(StartupError):
    """One or more settings are wrong; the message lists each with what to do.

    One problem makes a one-line message; several are listed one per line."""

    def __init__(self, *problems: str) -> None:
        self.problems = problems
        if len(problems) == 1:
            message = f"Veil cannot start: {problems[0]}"
        else:
            message = ("Veil cannot start; fix these settings (in .env or the environment):\n"
                       + "\n".join(f"  - {p}" for p in problems))
        super().__init__(message)


@dataclass(frozen=True)
class Settings:
    # Secrets stay out of repr (and so out of str, log lines and test failures).
    discord_token: str | None = field(repr=False)
    data_dir: Path
    master_key: bytes | None = field(repr=False)  # None: use or create <data_dir>/master.key
    public_url: str
    web_host: str
    web_port: int
    web_enabled: bool
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    generator: str
    sd_url: str | None
    generator_timeout_s: float
    dev_guild_id: int | None
    max_upload_bytes: int
    max_pixels: int
    per_user_queue_limit: int
    log_level: str = "INFO"
    image_size: int = DEFAULT_SIDE  # /imagine's width and height, in pixels
    comfyui_url: str | None = None
    comfyui_workflow: str | None = None  # a workflow file; None: the one shipped with Veil
    comfyui_checkpoint: str = "v1-5-pruned-emaonly.safetensors"
    other_master_keys: tuple[bytes, ...] = field(default=(), repr=False)
    # Several processes (README: 'Several processes on one data folder').
    shared_limits: bool = False
    # Link-server processes sharing one port (SO_REUSEPORT): `python -m bot web` only.
    web_workers: int = 1
    web_reuse_port: bool = False  # a worker started by another: bind beside it
    shard_count: int | None = None
    shard_ids: tuple[int, ...] | None = None
    sync_commands: bool = True

    # The privileged Server Members intent: lets Veil retract role-share copies the moment a
    # role is taken away, instead of at the member's next interaction.
    members_intent: bool = False
    # PostgreSQL instead of the SQLite file in data_dir (None). The URL may hold a password:
    # out of repr; show ``database_label`` instead.
    database_url: str | None = field(default=None, repr=False)
    db_pool_min: int = 1
    db_pool_max: int = 10

    @property
    def database_label(self) -> str:
        """The database in use, for people: its password never shown."""
        if self.database_url is None:
            return f"SQLite file {self.data_dir / 'veil.db'}"
        from db.postgres import redact_url

        return f"PostgreSQL at {redact_url(self.database_url)}"

    # Where encrypted image bytes and exports live: None, the data folder; or s3://bucket/prefix,
    # reached with ``s3`` (whose keys never show in a repr).
    blob_url: str | None = None
    s3: S3Settings = field(default_factory=S3Settings)

    def secrets(self) -> tuple[str, ...]:
        """The text secrets among the settings, for the log redactor: none may ever print."""
        return tuple(s for s in (self.discord_token, self.s3.access_key_id,
                                 self.s3.secret_access_key) if s)

    def master_keys(self) -> list[bytes] | None:
        """The keys given in the environment (None: the data folder's master.key)."""
        return None if self.master_key is None else [self.master_key, *self.other_master_keys]

    @property
    def generator_url(self) -> str | None:
        """The address of the configured generator backend (None for the built-in one)."""
        return {"sdwebui": self.sd_url, "comfyui": self.comfyui_url}.get(self.generator)


def _int(env: dict[str, str], name: str, default: int, errors: list[str], *, lo: int = 0,
         hi: int | None = None) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        errors.append(f"{name} must be a whole number, got {raw!r}.")
        return default
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        errors.append(f"{name} must be {bound}, got {value}.")
    return value


def _flag(env: dict[str, str], name: str, default: bool, errors: list[str]) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    errors.append(f"{name} must be on or off (1/0, true/false), got {raw!r}.")
    return default


def parse_master_key(raw: str) -> bytes:
    """Decode a 32-byte key given as 64 hex digits or url-safe base64."""
    raw = raw.strip()
    # The message never quotes the value: it is meant to be a secret, even when wrong.
    wanted = (f"must be 64 hex digits (or 43 url-safe base64 characters) for a 32-byte key; "
              f"the value given has {len(raw)} characters")
    try:
        if len(raw) == 64:
            key = bytes.fromhex(raw)
        else:
            key = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
    except (ValueError, binascii.Error) as exc:
        raise ValueError(wanted) from exc
    if len(key) != 32:
        raise ValueError(wanted)
    return key


def load_settings(env: dict[str, str] | None = None, *, require_token: bool = True,
                  dotenv_path: str | os.PathLike[str] | None = ".env") -> Settings:
    """Read settings from ``env`` (default: the process environment after loading `.env`).

    Raises ConfigError naming every problem at once, so one start-up shows everything to fix.
    """
    no_dotenv = False
    if env is None:
        if dotenv_path is not None:
            no_dotenv = not os.path.exists(dotenv_path)
            load_dotenv(dotenv_path, override=False)
        env = dict(os.environ)
    errors: list[str] = []

    token = env.get("DISCORD_TOKEN", "").strip() or None
    if require_token and token is None:
        if no_dotenv:
            errors.append(f"DISCORD_TOKEN is not set and there is no .env file: {ENV_EXAMPLE_HINT}"
                          " (README: 'Create the Discord application' says where to get it).")
        else:
            errors.append("DISCORD_TOKEN is not set. Create a bot in the Discord developer "
                          "portal (see README: 'Create the Discord application') and put its "
                          "token in .env.")

    data_dir = Path(env.get("VEIL_DATA_DIR", "").strip() or "./data").expanduser()

    master_key: bytes | None = None
    older_keys: tuple[bytes, ...] = ()
    raw_key = env.get("VEIL_MASTER_KEY", "").strip()
    if raw_key:
        try:
            # Several keys, comma-separated, while a rotation is under way: the database says
            # which one is current; the others open what is still wrapped under them.
            master_key, *rest = [parse_master_key(k) for k in raw_key.split(",") if k.strip()]
            older_keys = tuple(rest)
        except ValueError as exc:
            errors.append(f"VEIL_MASTER_KEY {exc}. Generate one with "
                          "`python -c \"import secrets; print(secrets.token_hex(32))\"`, "
                          "or leave it empty to keep the key in the data folder.")

    web_host = env.get("VEIL_WEB_HOST", "").strip() or "127.0.0.1"
    web_port = _int(env, "VEIL_WEB_PORT", 8080, errors, lo=0, hi=65535)
    public_url = (env.get("VEIL_PUBLIC_URL", "").strip()
                  or f"http://{web_host}:{web_port}").rstrip("/")
    if not public_url.startswith(("http://", "https://")):
        errors.append(f"VEIL_PUBLIC_URL must start with http:// or https://, got {public_url!r}.")

    proxies = []
    for item in filter(None, (p.strip() for p in env.get("VEIL_TRUSTED_PROXIES", "").split(","))):
        try:
            proxies.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            errors.append(f"VEIL_TRUSTED_PROXIES has {item!r}, which is not an address or network.")

    generator = env.get("VEIL_GENERATOR", "").strip().lower() or "procedural"
    if generator not in GENERATOR_KINDS:
        errors.append(f"VEIL_GENERATOR must be one of {', '.join(GENERATOR_KINDS)}, "
                      f"got {generator!r}.")
    sd_url = env.get("VEIL_SD_URL", "").strip().rstrip("/") or None
    if generator == "sdwebui" and sd_url is None:
        errors.append("VEIL_GENERATOR=sdwebui needs VEIL_SD_URL, e.g. http://127.0.0.1:7860.")
    comfyui_url = env.get("VEIL_COMFYUI_URL", "").strip().rstrip("/") or None
    if generator == "comfyui" and comfyui_url is None:
        errors.append("VEIL_GENERATOR=comfyui needs VEIL_COMFYUI_URL, e.g. http://127.0.0.1:8188.")
    for name, url in (("VEIL_SD_URL", sd_url), ("VEIL_COMFYUI_URL", comfyui_url)):
        if url is not None and not url.startswith(("http://", "https://")):
            errors.append(f"{name} must start with http:// or https://, got {url!r}.")
    comfyui_workflow = env.get("VEIL_COMFYUI_WORKFLOW", "").strip() or None
    if generator == "comfyui":
        from bot.generate.comfyui import WorkflowError, load_workflow

        try:
            load_workflow(comfyui_workflow)
        except WorkflowError as error:
            errors.append(f"VEIL_COMFYUI_WORKFLOW: {error}")

    dev_guild = env.get("VEIL_DEV_GUILD_ID", "").strip()
    dev_guild_id = None
    if dev_guild:
        if dev_guild.isdigit():
            dev_guild_id = int(dev_guild)
        else:
            errors.append(f"VEIL_DEV_GUILD_ID must be a server id (digits), got {dev_guild!r}.")

    log_level = env.get("VEIL_LOG_LEVEL", "").strip().upper() or "INFO"
    if log_level not in LOG_LEVELS:
        errors.append(f"VEIL_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, "
                      f"got {log_level!r}.")
        log_level = "INFO"

    image_size = _int(env, "VEIL_IMAGE_SIZE", DEFAULT_SIDE, errors, lo=MIN_SIDE, hi=MAX_SIDE)
    if image_size % 8:
        errors.append(f"VEIL_IMAGE_SIZE must be a multiple of 8 (generators draw in blocks of "
                      f"8 pixels), got {image_size}.")
        image_size = DEFAULT_SIDE
    database_url = env.get("VEIL_DATABASE_URL", "").strip() or None
    if database_url is not None and not database_url.startswith(("postgresql://",
                                                                 "postgres://")):
        errors.append("VEIL_DATABASE_URL must be a postgresql:// URL (e.g. "
                      "postgresql://veil:PASSWORD@db.internal:5432/veil), or empty for the "
                      "SQLite file in the data folder.")
    db_pool_min = _int(env, "VEIL_DB_POOL_MIN", 1, errors, lo=0, hi=1000)
    db_pool_max = _int(env, "VEIL_DB_POOL_MAX", 10, errors, lo=1, hi=1000)
    if db_pool_max < db_pool_min:
        errors.append(f"VEIL_DB_POOL_MAX ({db_pool_max}) must be at least VEIL_DB_POOL_MIN "
                      f"({db_pool_min}).")

    shard_count, shard_ids = _shards(env, errors)
    blob_url, s3 = _blob_store(env, errors)
    settings = Settings(
        discord_token=token,
        data_dir=data_dir,
        master_key=master_key,
        public_url=public_url,
        web_host=web_host,
        web_port=web_port,
        web_enabled=_flag(env, "VEIL_WEB_ENABLED", True, errors),
        trusted_proxies=tuple(proxies),
        generator=generator,
        sd_url=sd_url,
        generator_timeout_s=float(_int(env, "VEIL_GENERATOR_TIMEOUT", 120, errors, lo=1)),
        dev_guild_id=dev_guild_id,
        max_upload_bytes=_int(env, "VEIL_MAX_UPLOAD_MB", 25, errors, lo=1, hi=500) * 1024 * 1024,
        max_pixels=_int(env, "VEIL_MAX_MEGAPIXELS", 40, errors, lo=1, hi=400) * 1_000_000,
        per_user_queue_limit=_int(env, "VEIL_QUEUE_PER_USER", 2, errors, lo=1, hi=20),
        log_level=log_level,
        image_size=image_size,
        comfyui_url=comfyui_url,
        comfyui_workflow=comfyui_workflow,
        comfyui_checkpoint=(env.get("VEIL_COMFYUI_CHECKPOINT", "").strip()
                            or "v1-5-pruned-emaonly.safetensors"),
        other_master_keys=older_keys,
        shared_limits=_flag(env, "VEIL_SHARED_LIMITS", False, errors),
        web_workers=_int(env, "VEIL_WEB_WORKERS", 1, errors, lo=1, hi=64),
        shard_count=shard_count,
        shard_ids=shard_ids,
        sync_commands=_flag(env, "VEIL_SYNC_COMMANDS", shard_ids is None or 0 in shard_ids,
                            errors),
        members_intent=_flag(env, "VEIL_MEMBERS_INTENT", False, errors),
        blob_url=blob_url,
        s3=s3,
        database_url=database_url,
        db_pool_min=db_pool_min,
        db_pool_max=db_pool_max,
    )
    if errors:
        raise ConfigError(*errors)
    return settings


def _blob_store(env: dict[str, str], errors: list[str]) -> tuple[str | None, S3Settings]:
    """VEIL_BLOB_URL and the VEIL_S3_ settings that reach it."""
    blob_url = env.get("VEIL_BLOB_URL", "").strip() or None
    if blob_url is not None:
        try:
            parse_blob_url(blob_url)
        except ValueError as exc:
            errors.append(str(exc))
    endpoint = env.get("VEIL_S3_ENDPOINT_URL", "").strip().rstrip("/") or None
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        errors.append(f"VEIL_S3_ENDPOINT_URL must start with http:// or https://, "
                      f"got {endpoint!r}.")
    key_id = env.get("VEIL_S3_ACCESS_KEY_ID", "").strip() or None
    secret = env.get("VEIL_S3_SECRET_ACCESS_KEY", "").strip() or None
    if (key_id is None) != (secret is None):
        # Never quote either: both are credentials.
        errors.append("VEIL_S3_ACCESS_KEY_ID and VEIL_S3_SECRET_ACCESS_KEY go together: set "
                      "both, or neither to use the usual AWS sources (environment, instance "
                      "role).")
    return blob_url, S3Settings(endpoint, key_id, secret,
                                env.get("VEIL_S3_REGION", "").strip() or None)


def _shards(env: dict[str, str], errors: list[str]) -> tuple[int | None, tuple[int, ...] | None]:
    """VEIL_SHARD_COUNT and VEIL_SHARD_IDS, when several bot processes split the gateway. By
    default the process running shard 0 (or the only process) syncs slash commands."""
    shard_count = _int(env, "VEIL_SHARD_COUNT", 0, errors, lo=0, hi=10_000) or None
    shard_ids = None
    raw_ids = env.get("VEIL_SHARD_IDS", "").strip()
    if raw_ids:
        try:
            shard_ids = tuple(int(i) for i in raw_ids.split(",") if i.strip())
        except ValueError:
            errors.append(f"VEIL_SHARD_IDS must be shard numbers separated by commas, e.g. "
                          f"0,1, got {raw_ids!r}.")
        if shard_count is None:
            errors.append("VEIL_SHARD_IDS needs VEIL_SHARD_COUNT (the total across processes).")
        elif shard_ids and any(not 0 <= i < shard_count for i in shard_ids):
            errors.append(f"VEIL_SHARD_IDS must be between 0 and {shard_count - 1} "
                          f"(VEIL_SHARD_COUNT is {shard_count}), got {raw_ids!r}.")
    return shard_count, shard_ids
