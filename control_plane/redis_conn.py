"""Building Redis clients that survive restarts and never print the URL."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from control_plane.errors import ConfigError, TransientError
from control_plane.urls import parse_url


def redis_client(
    url: str,
    *,
    decode_responses: bool = True,
    timeout_s: float = 10.0,
    retries: int = 8,
) -> redis.Redis:
    """A client that retries connection errors with backoff (Redis restarts, failovers).

    `timeout_s` / `retries` shorter than the defaults bound how long one call can block
    (the workers' slot renewals must not wait out a long outage in one call)."""
    retry = Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=retries)
    return redis.Redis.from_url(
        url,
        decode_responses=decode_responses,
        retry=retry,
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        socket_connect_timeout=min(5.0, timeout_s),
        socket_timeout=timeout_s,
        health_check_interval=15,
    )


def describe_redis(url: str) -> str:
    """host:port/db (or the socket path) for banners: no user, password or query string."""
    parsed = parse_url(url)
    if parsed.scheme == "unix":
        return parsed.path or parsed.host
    return f"{parsed.host or 'localhost:6379'}{parsed.path}"


def check_redis(url: str) -> None:
    """Ping once at start, without retries: an unreachable Redis is a configuration error."""
    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=5, retry=None)
    try:
        client.ping()
    except redis.AuthenticationError:
        raise ConfigError(f"REDIS_URL: authentication refused by {describe_redis(url)}") from None
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        raise ConfigError(f"REDIS_URL: cannot reach Redis at {describe_redis(url)}") from None
    finally:
        client.close()


def is_transient_redis_error(exc: BaseException) -> bool:
    """True for errors a retry can cure (restart, failover, loading)."""
    return isinstance(exc, redis.ConnectionError | redis.TimeoutError | TransientError) or (
        isinstance(exc, redis.ResponseError)
        and str(exc).startswith(("LOADING", "BUSY", "TRYAGAIN"))
    )
