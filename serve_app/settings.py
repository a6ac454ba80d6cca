"""The application's settings: the typed `args` of `build_app`, with the embedded defaults.

Configuration flows one way: the code defaults (here, and in the core's own limits, which
sections such as `uploads` and `decode` take as they are), then the `args` of a Serve config file
(configs/local.yaml, configs/cluster.yaml), then each deployment's `user_config` at
runtime. Secrets (API keys, the webhook secret, the database URL with its password) may be
named by an environment variable instead of written into the file; they are read when the
application is built, never on import.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.audio.decode import DecodeLimits
from models.stems.routing import DEFAULT_ROUTING_PATH
from serve_app.http.body import UploadLimits
from serve_app.outbound.dispatcher import CONCURRENCY, POLL_S
from serve_app.outbound.fetch import FetchLimits
from serve_app.outbound.netguard import OutboundPolicy
from serve_app.outbound.webhooks import RetrySchedule
from serve_app.store.s3blobs import PRESIGN_MAX_S, S3Location


class Section(BaseModel):
    """A settings section: unknown keys are an error, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ApiKey(Section):
    """One API key, stored as the SHA-256 of the key (hex); `name` owns its tasks."""

    name: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class AuthSettings(Section):
    """Who may call the API. Off only in the local profile, which binds to 127.0.0.1."""

    enabled: bool = False
    keys: tuple[ApiKey, ...] = ()
    # An environment variable holding more keys as `name:key` pairs, comma separated
    # (a Kubernetes secret); they are hashed as they are read.
    keys_env: str | None = None

    def all_keys(self) -> tuple[ApiKey, ...]:
        """The configured keys and those of `keys_env`, hashed."""
        extra: list[ApiKey] = []
        if self.keys_env and os.environ.get(self.keys_env):
            for pair in os.environ[self.keys_env].split(","):
                name, _, key = pair.strip().partition(":")
                if not name or not key:
                    raise ValueError(f"{self.keys_env} must hold name:key pairs, comma separated")
                extra.append(ApiKey(name=name, sha256=hash_key(key)))
        return (*self.keys, *extra)


def hash_key(key: str) -> str:
    """How an API key is stored: SHA-256, hex. Keys are long random strings, so a slow
    password hash would add nothing but latency to every request."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class WebhookSettings(RetrySchedule):
    """Signing, sending and retrying webhooks: the dispatcher's retry schedule, its secret,
    how often it looks for due deliveries and how many it sends at once."""

    # The Standard Webhooks secret ("whsec_..."), or the environment variable holding it.
    # Neither set: a secret is generated when the application is built (fine on a laptop;
    # receivers then cannot verify across restarts).
    secret: str | None = None
    secret_env: str | None = None
    poll_s: float = POLL_S
    concurrency: int = CONCURRENCY

    def __post_init__(self) -> None:
        """Refuse a schedule, poll interval or concurrency the dispatcher would refuse."""
        super().__post_init__()
        if self.poll_s <= 0:
            raise ValueError(f"poll_s must be positive, got {self.poll_s}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")


class LimitSettings(Section):
    """Per-key request limits, admission and the disk space reserve."""

    conversions_per_minute: int = Field(60, gt=0)  # MusicGPT's default
    # Admission: past this many tasks waiting, new ones get 503 + Retry-After rather
    # than an eta nobody wants. Each waiting task is a row and an upload on disk.
    max_queued_tasks: int = Field(1000, gt=0)
    busy_retry_after_s: int = Field(30, gt=0)
    # Below this much free space in the data folder, new tasks get 503 + Retry-After and
    # no replica starts a queued one, so running tasks keep room to store their stems
    # (a 10-minute song's six WAV stems take about 640 MB).
    min_free_bytes: int = Field(1024**3, ge=0)


class RetentionSettings(Section):
    """How long inputs and stems are kept after a task ends."""

    keep_s: float = Field(24 * 3600.0, gt=0)
    sweep_every_s: float = Field(300.0, gt=0)


class PipelineSettings(Section):
    """How Pipeline replicas take and run tasks."""

    lease_s: float = Field(30.0, gt=0)  # a task whose worker stops renewing is retaken after this
    # How often an idle replica looks for work, and Housekeeping wakes the webhook dispatcher.
    poll_s: float = Field(2.0, gt=0)
    tasks_per_replica: int = Field(2, gt=0)
    segments_in_flight: int = Field(4, gt=0)  # per task, sent to the Separator together
    max_claims: int = Field(3, gt=0)  # a task that stopped its worker this often is FAILED
    # A task whose models are still loading waits this long for them, then FAILS.
    model_wait_s: float = Field(900.0, gt=0)


class EngineSettings(Section):
    """How the Separator runs its model."""

    device: str = "cpu"  # auto, cpu or cuda
    # auto: bf16 where the device does bf16 natively (models.engine.devices), else fp32.
    precision: Literal["auto", "fp32", "bf16"] = "fp32"
    overlap: float = Field(0.25, ge=0, lt=1)
    shifts: int = Field(0, ge=0)
    # Torch threads of a Separator or Preprocessor replica; None: every core the replica's
    # process may run on (Ray's OMP_NUM_THREADS follows num_cpus, which is a scheduling
    # share, not a thread budget).
    threads: int | None = Field(None, gt=0)
    # A model that failed to load is tried again this often, so weights put in place later
    # are picked up without a redeploy.
    model_retry_s: float = Field(30.0, gt=0)


class SeparatorDeployments(Section):
    """The Serve options of every Separator: `build_app` binds one per routed model with
    these, so a model added to the routing needs no block of its own in a config file. A
    `deployments` entry named `Separator_<model>` beside `args` still overrides them for
    that model, as it would any option set in code. Unset options keep the code's."""

    num_replicas: int | None = Field(None, gt=0)
    max_ongoing_requests: int | None = Field(None, gt=0)
    ray_actor_options: dict[str, Any] | None = None
    autoscaling_config: dict[str, Any] | None = None
    # Reaches Separator.reconfigure: `max_batch_size`, `batch_wait_timeout_s`.
    user_config: dict[str, Any] | None = None

    def options(self) -> dict[str, Any]:
        """As `Deployment.options` takes them."""
        return self.model_dump(exclude_none=True)


class PricingSettings(Section):
    """How `eta` and `credit_estimate` are computed (see the README)."""

    credits_per_minute: float = Field(1.0, ge=0)
    # Seconds of work per second of audio and per model pass, used until this
    # deployment has finished tasks of its own to measure.
    seconds_per_audio_second: float = Field(1.0, gt=0)


class S3Settings(Section):
    """How the S3 API of `blob_url` is reached. Credentials never come from here: they
    come from the environment as for any AWS client (AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY, a profile, or the machine's role)."""

    endpoint_url: str | None = None  # an S3-compatible store (MinIO, Ceph); None: AWS
    region: str | None = None  # None: the environment's (AWS_DEFAULT_REGION)
    # Stem URLs in results (byId, webhooks) as presigned S3 GET URLs lasting
    # `presign_expiry_s` (1 s to 7 days, S3's limit) rather than the API's file endpoint,
    # so downloads go straight to the bucket. Only with an s3:// `blob_url`.
    presign_urls: bool = False
    presign_expiry_s: int = Field(3600, ge=1, le=PRESIGN_MAX_S)

    @field_validator("endpoint_url")
    @classmethod
    def _an_http_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError(f"s3.endpoint_url {url!r} is not an http:// or https:// URL")
        return url


class MissingDatabaseUrlError(ValueError):
    """The database URL's environment variable is named but holds nothing."""


class DatabaseSettings(Section):
    """Each process's connections to a server database (PostgreSQL; SQLite has none):
    `pool_size` kept open plus as many more at peak, so a process holds at most twice it.
    Every replica of every deployment has its own pool: keep the sum under the server's
    `max_connections` (see the README's Running at scale)."""

    pool_size: int = Field(5, ge=1)
    connect_timeout_s: float = Field(10.0, gt=0)  # per try; libpq counts whole seconds


class AppArgs(Section):
    """Everything `build_app` takes; every field has the local default."""

    data_dir: str = "data"
    # Where blobs (uploads, stems) live: None, the folder data_dir/blobs; "s3://bucket/prefix",
    # objects in S3 (see `s3`), for replicas that share no disk. Uploads then spool in
    # data_dir/spool on each replica's own disk.
    blob_url: str | None = None
    s3: S3Settings = S3Settings()
    database_url: str | None = None  # default: sqlite:///<data_dir>/tasks.db
    # An environment variable holding the database URL (a Kubernetes secret: the URL
    # carries the password); set and non-empty, it wins over `database_url`.
    database_url_env: str | None = None
    database: DatabaseSettings = DatabaseSettings()
    routing: str = str(DEFAULT_ROUTING_PATH)
    model_dir: str | None = None
    use_hub: bool = True
    public_url: str = "http://127.0.0.1:8000"  # where clients reach the API; stem URLs use it
    auth: AuthSettings = AuthSettings()
    # The core's own limits, validated by their dataclasses; unknown keys are refused in
    # them too (pydantic applies this model's `extra="forbid"` to nested dataclasses).
    uploads: UploadLimits = UploadLimits()
    fetch: FetchLimits = FetchLimits()
    decode: DecodeLimits = DecodeLimits()
    webhooks: WebhookSettings = WebhookSettings()
    # Which addresses `audio_url` downloads and webhooks may reach. By default only public
    # addresses: loopback, private, link-local (cloud metadata), CGNAT, multicast and the
    # like are refused (serve_app/outbound/netguard.py).
    outbound: OutboundPolicy = OutboundPolicy()
    limits: LimitSettings = LimitSettings()
    retention: RetentionSettings = RetentionSettings()
    pipeline: PipelineSettings = PipelineSettings()
    engine: EngineSettings = EngineSettings()
    separators: SeparatorDeployments = SeparatorDeployments()
    pricing: PricingSettings = PricingSettings()

    @field_validator("blob_url")
    @classmethod
    def _an_s3_url(cls, url: str | None) -> str | None:
        if url is not None:
            S3Location.parse(url)  # ValueError, which pydantic reports against blob_url
        return url

    @model_validator(mode="after")
    def _presign_needs_s3(self) -> AppArgs:
        if self.s3.presign_urls and self.blob_url is None:
            raise ValueError(
                "s3.presign_urls needs blob_url set to s3://bucket/prefix: "
                "the local blob store has no presigned URLs"
            )
        return self

    def presign_expiry_s(self) -> int | None:
        """How long presigned stem URLs last; None: stems are served by the API."""
        return self.s3.presign_expiry_s if self.s3.presign_urls else None

    def data_path(self) -> Path:
        """The data folder, absolute, so every replica resolves it alike."""
        return Path(self.data_dir).expanduser().resolve()

    def db_url(self) -> str:
        """The database URL: `database_url_env`'s variable, else `database_url`, else a
        SQLite file in the data folder. A variable that is named but unset or empty with no
        `database_url` to fall back on is an error: in a cluster, a replica that quietly
        opened a SQLite file of its own would take tasks no other replica can see."""
        if self.database_url_env and os.environ.get(self.database_url_env):
            return os.environ[self.database_url_env]
        if self.database_url:
            return self.database_url
        if self.database_url_env:
            raise MissingDatabaseUrlError(
                f"database_url_env names {self.database_url_env}, which is unset or empty, "
                "and no database_url is configured: set the variable (in Kubernetes, from "
                "the Secret) or remove database_url_env to use the local SQLite file"
            )
        return f"sqlite:///{self.data_path() / 'tasks.db'}"

    def webhook_secret(self) -> str | None:
        """The configured webhook secret, if any."""
        if self.webhooks.secret_env and os.environ.get(self.webhooks.secret_env):
            return os.environ[self.webhooks.secret_env]
        return self.webhooks.secret
