"""S3 and Azure Blob exchanges (issue 16), through `obstore` (Rust's object_store).

A create-only put is ``PUT`` with ``If-None-Match: *`` (obstore's ``mode="create"``): the
service refuses it when the name exists, so racing writers of one name make exactly one
winner, and an object is visible whole or not at all (a single, non-multipart request).

Configurations (credentials travel in the domain's encrypted `exchanges` file and in invites
sealed to their receiver; the local copy is encrypted, see `weshare.credentials`)::

    {"kind": "s3", "bucket": B, "region": R, "access_key_id": K, "secret_access_key": S,
     "endpoint": "http://127.0.0.1:9000" (optional), "prefix": P (optional)}
    {"kind": "azure", "account": A, "container": C, "access_key": K,
     "endpoint": URL (optional), "prefix": P (optional)}

Both take ``"timeout_s"`` (per request, default 30) and ``"retries"`` (default 3): a stopped
server fails an operation in seconds, not obstore's default three minutes.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from weshare.credentials import scrub
from weshare.errors import ExchangeError, ObjectNotFound, UsageError

if TYPE_CHECKING:
    from obstore.store import ClientConfig, ObjectStore, RetryConfig


class ObjectStoreExchange:
    """An exchange in an object store (S3, Azure Blob) reached through `obstore`."""

    def __init__(self, store: ObjectStore, what: str, secrets: tuple[str, ...] = ()) -> None:
        self._store = store
        self._what = what  # "s3 bucket b at http://..."; no credential
        self._secrets = secrets

    def __repr__(self) -> str:
        return f"ObjectStoreExchange({self._what})"

    def _error(self, exc: BaseException) -> ExchangeError:
        return ExchangeError(scrub(f"{self._what}: {type(exc).__name__}: {exc}", self._secrets))

    async def put_if_absent(self, name: str, data: bytes | memoryview) -> bool:
        """See `weshare.exchange.Exchange.put_if_absent`."""
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        try:
            # If-None-Match: * (one request, never multipart: visible whole or not at all)
            await obstore.put_async(self._store, name, data, mode="create")
        except (AlreadyExistsError, PreconditionError):
            return False
        except Exception as exc:
            raise self._error(exc) from None
        return True

    async def get(self, name: str) -> bytes:
        """See `weshare.exchange.Exchange.get`."""
        import obstore

        try:
            result = await obstore.get_async(self._store, name)
            return bytes(await result.bytes_async())
        except FileNotFoundError:
            raise ObjectNotFound(name) from None
        except Exception as exc:
            raise self._error(exc) from None

    async def list(self, prefix: str, after: str = "") -> list[str]:
        """See `weshare.exchange.Exchange.list`: one folder level, as the folder exchange.

        Object stores list a key range in order: start past `after`, or just below `prefix`
        (its last character dropped: every key that starts with `prefix` sorts above that),
        and stop at the first key past the prefix's range."""
        import obstore

        folder = prefix.rpartition("/")[0]
        depth = prefix.count("/")
        names: list[str] = []
        try:
            stream = obstore.list(
                self._store, folder or None, offset=max(after, prefix[:-1]), chunk_size=1000
            )
            async for batch in stream:
                for meta in batch:
                    path = meta["path"]
                    if not path.startswith(prefix):
                        if path > prefix:
                            return names  # sorted: nothing further can match
                        continue
                    if path.count("/") == depth:
                        names.append(path)
        except Exception as exc:
            raise self._error(exc) from None
        return names

    async def delete(self, name: str) -> None:
        """See `weshare.exchange.Exchange.delete`."""
        import obstore

        try:
            await obstore.delete_async(self._store, name)
        except FileNotFoundError:
            return
        except Exception as exc:
            raise self._error(exc) from None

    async def sweep(self, prefix: str, older_than_s: float) -> int:
        """See `weshare.exchange.Exchange.sweep`: a put is one request, nothing is left."""
        return 0

    async def close(self) -> None:
        """Nothing to release: obstore pools its connections per store."""


def _text(config: Mapping[str, Any], key: str, kind: str, *, required: bool = True) -> str:
    value = config.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value:
        raise UsageError(f'an {kind} exchange needs "{key}" (a string)')
    return value


def _client(config: Mapping[str, Any]) -> tuple[ClientConfig, RetryConfig]:
    timeout = float(config.get("timeout_s", 30))
    client: ClientConfig = {
        "timeout": timedelta(seconds=timeout),
        "connect_timeout": timedelta(seconds=min(timeout, 5)),
    }
    endpoint = config.get("endpoint")
    if isinstance(endpoint, str) and endpoint.startswith("http://"):
        client["allow_http"] = True  # a local test server; real services are https
    retries: RetryConfig = {
        "max_retries": int(config.get("retries", 3)),
        "retry_timeout": timedelta(seconds=timeout),
        "backoff": {
            "init_backoff": timedelta(milliseconds=50),
            "max_backoff": timedelta(seconds=1),
        },
    }
    return client, retries


def open_s3(config: Mapping[str, Any]) -> ObjectStoreExchange:
    """The S3 exchange `config` describes (see the module's docstring)."""
    from obstore.store import S3Store

    bucket = _text(config, "bucket", "s3")
    key_id = _text(config, "access_key_id", "s3")
    secret = _text(config, "secret_access_key", "s3")
    endpoint = _text(config, "endpoint", "s3", required=False)
    region = _text(config, "region", "s3", required=False) or "us-east-1"
    client, retries = _client(config)
    options: dict[str, Any] = {"access_key_id": key_id, "secret_access_key": secret}
    if endpoint:
        options["endpoint"] = endpoint
        options["virtual_hosted_style_request"] = False
    token = config.get("session_token")
    if isinstance(token, str) and token:
        options["session_token"] = token
    try:
        store = S3Store(
            bucket, prefix=config.get("prefix") or None, region=region, client_options=client,
            retry_config=retries, **options,
        )  # fmt: skip
    except Exception as exc:
        raise UsageError(scrub(f"s3 exchange: {exc}", (secret,))) from None
    where = f" at {endpoint}" if endpoint else ""
    return ObjectStoreExchange(store, f"s3 bucket {bucket}{where}", (secret, key_id))


def open_azure(config: Mapping[str, Any]) -> ObjectStoreExchange:
    """The Azure Blob exchange `config` describes (see the module's docstring)."""
    from obstore.store import AzureStore

    account = _text(config, "account", "azure")
    container = _text(config, "container", "azure")
    key = _text(config, "access_key", "azure")
    endpoint = _text(config, "endpoint", "azure", required=False)
    client, retries = _client(config)
    options: dict[str, Any] = {"account_name": account, "account_key": key}
    if endpoint:
        options["endpoint"] = endpoint
    try:
        store = AzureStore(
            container, prefix=config.get("prefix") or None, client_options=client,
            retry_config=retries, **options,
        )  # fmt: skip
    except Exception as exc:
        raise UsageError(scrub(f"azure exchange: {exc}", (key,))) from None
    where = f" at {endpoint}" if endpoint else ""
    return ObjectStoreExchange(store, f"azure container {container}{where}", (key,))
