"""Shared fixtures: a throwaway PostgreSQL database per test session and the shared candle data.

The database server is the one named by ``TEST_DATABASE_URL`` (CI sets it to the PostgreSQL at
127.0.0.1:5432), else the embedded pgserver, which the session stops at its end when the session
started it. Each session creates a fresh database, points ``DATABASE_URL`` at it (so subprocesses,
dbt and Airflow tasks use it too) and drops it afterwards.

The real candles are read from ``../shared/data`` beside the repository, or from the folder named by
``CRYPTO_MARL_SHARED_DATA`` (a folder that does not exist runs the suite as on a fresh clone:
``.ci/run`` does this for the tests with a synthetic fallback).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

ROOT = Path(__file__).resolve().parents[1]

# Property tests: under CI (CI=true, or HYPOTHESIS_PROFILE=ci) the examples are derived from each
# test's name (derandomize), so a run can be repeated exactly and a red build is never a lucky draw;
# no deadline either, since this machine is shared. Locally hypothesis explores new examples.
hypothesis_settings.register_profile("ci", derandomize=True, deadline=None, database=None, print_blob=True)
hypothesis_settings.register_profile("dev", deadline=None)
hypothesis_settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI", "").lower() == "true" else "dev")
)
sys.path.insert(0, str(ROOT))

SHARED_DATA = Path(os.environ.get("CRYPTO_MARL_SHARED_DATA") or ROOT.parent / "shared" / "data")
SHARED_1H = SHARED_DATA / "binance_spot_1h_2017_2022"
SHARED_1D = SHARED_DATA / "binance_spot_1d_2017_2022"


def _server_url() -> str:
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        return url.replace("postgresql://", "postgresql+psycopg2://", 1)
    import db

    return db.embedded_url()


@pytest.fixture(scope="session")
def database_url() -> str:
    """URL of a fresh database for this test session; DATABASE_URL points at it meanwhile."""
    import db

    previous = os.environ.get("DATABASE_URL")
    embedded = contextlib.nullcontext() if os.environ.get("TEST_DATABASE_URL") else db.embedded_session()
    with embedded, db.scratch_database("test", _server_url()) as url:
        os.environ["DATABASE_URL"] = url
        try:
            yield url
        finally:
            if previous is None:
                os.environ.pop("DATABASE_URL", None)
            else:
                os.environ["DATABASE_URL"] = previous


@pytest.fixture(scope="session")
def engine(database_url):
    """A migrated SQLAlchemy engine on the session's database."""
    import db

    return db.get_engine(database_url)


def require_shared_data(path: Path = SHARED_DATA) -> Path:
    """Return ``path``; skip the test when it is missing, but fail under CI where it must exist."""
    if not path.exists():
        reason = (
            f"{path} is missing: these tests replay the real Binance candles kept in ../shared/data "
            "beside the repository (not shipped with a clone; README 'Real candles' says how to get them)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def shared_1h() -> Path:
    return require_shared_data(SHARED_1H)


@pytest.fixture(scope="session")
def shared_1d() -> Path:
    return require_shared_data(SHARED_1D)


@pytest.fixture
def fake_exchange():
    """A running :class:`binance.fake_exchange.FakeExchange` (``.url``, ``.inject(...)``, ``.set_now(...)``).

    It replays the real 1h candles in ../shared/data when they are present, else a seeded synthetic
    market (BTC, ETH, BNB, ADA against USDT). Point ccxt at it with
    ``binance.make_exchange(base_url=fake_exchange.url)`` or ``BINANCE_BASE_URL``.
    """
    from binance.fake_exchange import FakeExchange

    data_dir = SHARED_1H if SHARED_1H.exists() else None
    with FakeExchange(data_dir=data_dir) as fake:
        yield fake


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers",
        "synthetic_fallback: runs on the real candles when present, else on synthetic data "
        "(.ci/run runs these again with the shared data hidden)",
    )


def pytest_collection_modifyitems(items) -> None:
    # Every user of the fake_exchange fixture has the fallback (it serves synthetic candles without
    # ../shared/data); other tests mark themselves.
    for item in items:
        if "fake_exchange" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.synthetic_fallback)
