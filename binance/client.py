"""The ccxt Binance spot client factory: the one place that configures exchange access.

Settings (environment or ``.env``; arguments win): ``BINANCE_API_KEY`` / ``BINANCE_API_SECRET``
(optional, public market data needs none; never printed or logged), ``BINANCE_TESTNET``,
``BINANCE_BASE_URL`` (send every REST call to another host, e.g. the local fake exchange) and
``BINANCE_TIMEOUT_MS``.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import ccxt

from settings import env

log = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes", "on"}


def _rebase(url: str, base_url: str) -> str:
    """``https://api.binance.com/api/v3`` -> ``<base_url>/api/v3`` (scheme and host replaced)."""
    parts = urlsplit(url)
    return base_url.rstrip("/") + parts.path


def _rebase_tree(urls: Any, base_url: str) -> Any:
    # ccxt keeps a flat dict of api-name -> URL for binance, but other layouts nest: recurse.
    if isinstance(urls, str):
        return _rebase(urls, base_url)
    if isinstance(urls, dict):
        return {key: _rebase_tree(value, base_url) for key, value in urls.items()}
    return urls


def make_exchange(
    base_url: str | None = None,
    *,
    testnet: bool | None = None,
    api_key: str | None = None,
    secret: str | None = None,
    timeout_ms: int | None = None,
    rate_limit_ms: int | None = None,
    options: dict[str, Any] | None = None,
) -> ccxt.binance:
    """Build the ccxt Binance spot client.

    ``base_url`` (default ``BINANCE_BASE_URL``) replaces scheme and host of EVERY REST endpoint
    ccxt knows (spot, sapi, futures, options), so nothing leaks to the real exchange when it is set.
    Rate limiting stays on; ``rate_limit_ms`` only changes ccxt's spacing between requests.
    Only spot markets are loaded, and the signed currency/margin endpoints ccxt would call when keys
    are present are switched off, because market-data ingestion needs neither.
    """
    base_url = base_url or env("BINANCE_BASE_URL")
    if testnet is None:
        testnet = (env("BINANCE_TESTNET", "false") or "").lower() in _TRUE
    config: dict[str, Any] = {
        "enableRateLimit": True,
        # fetch_data detects malformed bodies (ccxt would parse them into an empty list) from this
        "enableLastJsonResponse": True,
        "timeout": int(timeout_ms or env("BINANCE_TIMEOUT_MS", "10000")),
        "options": {
            "defaultType": "spot",
            "fetchMarkets": {"types": ["spot"]},
            "fetchCurrencies": False,
            "fetchMargins": False,
            **(options or {}),
        },
    }
    key = api_key or env("BINANCE_API_KEY")
    secret = secret or env("BINANCE_API_SECRET")
    if key and secret:
        config["apiKey"] = key
        config["secret"] = secret
    if rate_limit_ms is not None:
        config["rateLimit"] = rate_limit_ms
    exchange = ccxt.binance(config)
    if base_url:
        if testnet:
            log.warning("BINANCE_TESTNET ignored: BINANCE_BASE_URL sends every request to %s", base_url)
        exchange.urls["api"] = _rebase_tree(exchange.urls["api"], base_url)
        # sandbox mode would swap urls['api'] for urls['test']; rebase those too so it cannot leak.
        exchange.urls["test"] = _rebase_tree(exchange.urls.get("test", {}), base_url)
    elif testnet:
        exchange.set_sandbox_mode(True)
    log.debug(
        "binance client: base=%s testnet=%s keys=%s", base_url or "binance.com", testnet, bool(key and secret)
    )
    return exchange


# The local fake exchange's command, named in every "cannot reach the exchange" message.
FAKE_EXCHANGE_COMMAND = "python -m binance.fake_exchange --port 8765"


def api_base_url(client: ccxt.Exchange) -> str:
    """Scheme and host the client sends market-data requests to, e.g. ``https://api.binance.com``."""
    api = client.urls.get("api", {})
    url = api.get("public") if isinstance(api, dict) else api
    if not isinstance(url, str):  # another exchange's layout: the first URL found
        url = next((u for u in (api.values() if isinstance(api, dict) else []) if isinstance(u, str)), "")
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else str(url)


def network_cause(exc: BaseException) -> str:
    """The root cause of a failed request in one line, e.g. ``ConnectionRefusedError: [Errno 111]
    Connection refused``: the innermost OS-level error of the chain when there is one (ccxt's own
    message only names the URL), else ccxt's message."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for error in reversed(chain):
        if isinstance(error, OSError) and str(error):
            return f"{type(error).__name__}: {' '.join(str(error).split())}"[:300]
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]


def unreachable_hint(base_url: str) -> str:
    """What to do when the exchange at ``base_url`` cannot be reached."""
    if env("BINANCE_BASE_URL"):
        return (
            f"BINANCE_BASE_URL={env('BINANCE_BASE_URL')} sends every request there: start the local fake "
            f"exchange (`{FAKE_EXCHANGE_COMMAND}`, then BINANCE_BASE_URL=http://127.0.0.1:8765) or fix "
            "or unset BINANCE_BASE_URL"
        )
    return (
        f"check the network connection to {base_url}; to work offline, start the local fake exchange "
        f"(`{FAKE_EXCHANGE_COMMAND}`) and set BINANCE_BASE_URL=http://127.0.0.1:8765"
    )
