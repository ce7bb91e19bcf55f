"""Where runs live: local paths and URIs (`s3://`, `gs://`, any fsspec protocol) behind one `Location`.

Every file raytrain writes goes through here: run folders, metrics, checkpoints (the in-process path),
search results. Ray Train and Tune get the same filesystem object (`Location.for_ray`), so their
checkpoints land beside ours. Remote endpoints get short timeouts and a reachability and credentials
check before anything starts: a bad URI, a missing bucket, missing credentials or an unreachable
endpoint is one line (UserError) in seconds, never a hang.

S3 endpoints other than AWS are set the standard way: `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_S3`),
or `s3://bucket/prefix?endpoint_override=http://host:port`. Credentials come from the environment,
the shared credentials file, web identity (IRSA) or the instance role, never from the YAML.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qs, urlparse

import pyarrow.fs as pafs

from raytrain.errors import UserError

CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 60.0
S3_KEYS = ("endpoint_override", "region", "scheme", "anonymous")
GCS_KEYS = ("endpoint_override", "scheme", "anonymous")
SECRETISH = ("key", "secret", "token", "password", "credential")


@dataclass(frozen=True)
class Location:
    """A folder or file on some filesystem: `fs` + `path` (no scheme), the URI it came from without its options
    (`base`) and those options (`query`, e.g. `endpoint_override=...`): `uri` carries them along, so a location
    handed to another process as text resolves to the same endpoint there."""
    fs: pafs.FileSystem
    path: str
    base: str
    query: str = ""

    @property
    def uri(self) -> str:
        return f"{self.base}?{self.query}" if self.query else self.base

    @property
    def remote(self) -> bool:
        return not isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def __truediv__(self, part: str) -> "Location":
        return Location(self.fs, f"{self.path.rstrip('/')}/{part}", f"{self.base.rstrip('/')}/{part}", self.query)

    def __str__(self) -> str:
        return self.uri

    @property
    def parent(self) -> "Location":
        return Location(self.fs, self.path.rstrip("/").rsplit("/", 1)[0], self.base.rstrip("/").rsplit("/", 1)[0],
                        self.query)

    def info(self) -> pafs.FileInfo:
        return _call(self, lambda: self.fs.get_file_info(self.path))

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self.info().type == pafs.FileType.Directory

    def children(self, dirs_only: bool = False) -> list["Location"]:
        """Entries directly inside this folder (none if it does not exist)."""
        sel = pafs.FileSelector(self.path, allow_not_found=True, recursive=False)
        return [self / i.base_name for i in _call(self, lambda: self.fs.get_file_info(sel))
                if not dirs_only or i.type == pafs.FileType.Directory]

    def read_bytes(self) -> bytes:
        def read():
            with self.fs.open_input_stream(self.path) as f:
                return f.read()
        return _call(self, read)

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> None:
        """One complete object per write: a temp file + rename locally, a single PUT on object stores
        (never a torn or half-appended file)."""
        if not self.remote:
            tmp = Path(self.path).with_name(f".{Path(self.path).name}.tmp{os.getpid()}")
            tmp.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, self.path)
            return

        def put():
            with self.fs.open_output_stream(self.path) as f:
                f.write(data)
        _call(self, put)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def makedirs(self) -> None:
        _call(self, lambda: self.fs.create_dir(self.path, recursive=True))

    def delete_dir(self) -> None:
        _call(self, lambda: self.fs.delete_dir(self.path))

    def for_ray(self) -> tuple[str, Optional[pafs.FileSystem]]:
        """(storage_path, storage_filesystem) for Ray Train's / Tune's RunConfig."""
        return (self.path, self.fs) if self.remote else (self.path, None)


def _call(loc: Location, fn):
    try:
        return fn()
    except OSError as e:
        raise UserError(f"{loc.uri}: {_reason(e)}") from None


def _reason(e: Exception) -> str:
    text = " ".join(str(e).split())
    if "NETWORK_CONNECTION" in text or "Could not connect" in text or "curlCode: 7" in text:
        return "cannot reach the storage endpoint (" + text.split("Details:")[-1].strip()[:120] + ")"
    if "ACCESS_DENIED" in text or "AccessDenied" in text or "403" in text:
        return "access denied (check the credentials and the bucket's permissions)"
    if "NoSuchBucket" in text or "NO_SUCH_BUCKET" in text:
        return "bucket does not exist"
    return text[:200]


def is_uri(text: str) -> bool:
    return "://" in str(text) and not str(text).startswith("file://")


def resolve(uri: str | os.PathLike, key: str = "output") -> Location:
    """A `Location` for a local path or a URI; `key` names the setting in errors."""
    text = str(uri)
    if not is_uri(text):
        path = Path(text.removeprefix("file://")).expanduser().resolve()
        return Location(pafs.LocalFileSystem(), str(path), str(path))
    parsed = urlparse(text)
    query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    for k, v in query.items():  # credential-like options are refused below: their values never repeated
        if v and any(w in k.lower() for w in SECRETISH):
            text = text.replace(f"{k}={v}", f"{k}=...")
    bucket_path = (parsed.netloc + parsed.path).rstrip("/")
    clean = f"{parsed.scheme}://{bucket_path}"
    if parsed.password is not None or ("@" in parsed.netloc and parsed.scheme in ("s3", "s3a", "gs", "gcs")):
        # s3://KEY:SECRET@bucket/... (a user name alone is fine elsewhere, e.g. hdfs://user@namenode/): refused
        # without repeating them
        raise UserError(f"{key} {parsed.scheme}://...@{parsed.netloc.rsplit('@', 1)[1]}{parsed.path}: credentials in the "
                        "URI; they come from the environment, a profile or an instance role, never from a URI or the YAML")
    if not parsed.netloc:
        raise UserError(f"{key} {text}: no bucket in the URI (expected {parsed.scheme}://bucket/prefix)")
    if parsed.scheme in ("s3", "s3a"):
        fs = _s3(query, key, text)
    elif parsed.scheme in ("gs", "gcs"):
        fs = _gcs(query, key, text)
    else:
        fs = _fsspec(parsed.scheme, query, key, text)
    return Location(fs, bucket_path, clean, parsed.query)


def from_fs(fs, path: str) -> Location:
    """A Location for a path on a filesystem Ray hands back (its Checkpoint's), named by its scheme."""
    if fs is None or isinstance(fs, pafs.LocalFileSystem):
        return Location(pafs.LocalFileSystem(), path, path)
    scheme = {"s3": "s3", "gcs": "gs"}.get(fs.type_name, fs.type_name)
    return Location(fs, path, f"{scheme}://{path}")


def _options(query: dict, allowed: tuple, key: str, text: str) -> None:
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise UserError(f"{key} {text}: unknown URI option {unknown[0]!r} (allowed: {', '.join(allowed)}; "
                        "credentials come from the environment or an instance role)")


def _s3(query: dict, key: str, text: str) -> pafs.FileSystem:
    _options(query, S3_KEYS, key, text)
    anonymous = query.get("anonymous", "").lower() in ("1", "true", "yes")
    if not anonymous and not aws_credentials_available():
        raise UserError(f"{key} {text}: no AWS credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
                        "AWS_PROFILE, use web identity (IRSA) or an instance role; add ?anonymous=true for a public bucket)")
    endpoint = query.get("endpoint_override") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return pafs.S3FileSystem(
        anonymous=anonymous, region=query.get("region"), scheme=query.get("scheme"), endpoint_override=endpoint,
        connect_timeout=CONNECT_TIMEOUT_S, request_timeout=REQUEST_TIMEOUT_S,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=3))


def aws_credentials_available() -> bool:
    """The AWS SDK's credential chain, without asking the network: environment keys, a profile or shared
    credentials file, web identity (IRSA), container credentials, else the instance metadata service
    (unless AWS_EC2_METADATA_DISABLED says there is none)."""
    env = os.environ
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return True
    if env.get("AWS_WEB_IDENTITY_TOKEN_FILE") or env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") \
            or env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        return True
    shared = Path(env.get("AWS_SHARED_CREDENTIALS_FILE", Path.home() / ".aws" / "credentials"))
    if env.get("AWS_PROFILE") or shared.is_file():
        return True
    return env.get("AWS_EC2_METADATA_DISABLED", "").lower() != "true"


def _gcs(query: dict, key: str, text: str) -> pafs.FileSystem:
    from datetime import timedelta

    _options(query, GCS_KEYS, key, text)
    anonymous = query.get("anonymous", "").lower() in ("1", "true", "yes")
    adc = Path.home() / ".config" / "gcloud" / "application_default_credentials.json"
    on_gce = os.environ.get("NO_GCE_CHECK", "").lower() not in ("true", "1")
    if not (anonymous or os.environ.get("GOOGLE_APPLICATION_CREDENTIALS") or adc.is_file() or on_gce):
        raise UserError(f"{key} {text}: no Google Cloud credentials (set GOOGLE_APPLICATION_CREDENTIALS, run "
                        "`gcloud auth application-default login`, or use workload identity)")
    return pafs.GcsFileSystem(anonymous=anonymous, endpoint_override=query.get("endpoint_override"),
                              scheme=query.get("scheme"), retry_time_limit=timedelta(seconds=15))


def _fsspec(protocol: str, query: dict, key: str, text: str) -> pafs.FileSystem:
    import fsspec

    secret = [k for k in query if any(w in k.lower() for w in SECRETISH)]
    if secret:
        raise UserError(f"{key} {text}: URI option {secret[0]!r} looks like a credential; credentials come from the "
                        "environment, never from a URI or the YAML")
    try:
        fs = fsspec.filesystem(protocol, **query)
    except (ValueError, ImportError, TypeError) as e:
        raise UserError(f"{key} {text}: no filesystem for {protocol}:// ({str(e).splitlines()[0][:120]})") from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def check_reachable(loc: Location, key: str = "output") -> None:
    """Fail fast (one line) when a remote location's bucket is missing or its endpoint unreachable."""
    if not loc.remote:
        return
    bucket = loc.path.split("/", 1)[0]
    try:
        kind = loc.fs.get_file_info(bucket).type
    except OSError as e:
        raise UserError(f"{key} {loc.uri}: {_reason(e)}") from None
    if kind == pafs.FileType.NotFound:
        raise UserError(f"{key} {loc.uri}: bucket {bucket!r} does not exist (create it first)")


def new_run_dir(root: Location, name: str) -> Location:
    """<root>/<name>/<timestamp>[-k], never another run's folder. Locally an exclusive mkdir; on object
    stores (no exclusive create) the timestamp gets a random suffix, checked to be unused."""
    base = root / name
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    if not root.remote:
        for k in range(1000):
            cand = Path(base.path) / (stamp if k == 0 else f"{stamp}-{k}")
            try:
                cand.mkdir(parents=True, exist_ok=False)
                return resolve(str(cand))
            except FileExistsError:
                continue
            except OSError as e:
                raise UserError(f"output {root.uri}: cannot create a run folder ({e.strerror})") from None
        raise UserError(f"output: cannot create a new run folder under {base.uri}")
    for _ in range(10):
        cand = base / f"{stamp}-{secrets.token_hex(3)}"
        if not cand.exists():
            cand.makedirs()
            return cand
    raise UserError(f"output: cannot find an unused run folder under {base.uri}")


def local_cache_root(output: str) -> Path:
    """Where decoded data and compile caches go: beside local output, else the user's cache folder."""
    if not is_uri(output):
        return Path(output).expanduser().resolve() / ".cache"
    return Path(os.environ.get("RAYTRAIN_CACHE", Path.home() / ".cache" / "raytrain"))
