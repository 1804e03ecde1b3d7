"""tearsheet.py: every number of the report against an independent computation (pandas resampling,
empyrical, Position's own round trips, plain loops), the drawdown table on hand-made curves, the HTML
self-contained, and rendered by a real headless Chromium with every figure present and non-blank."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import shutil
import subprocess
from html.parser import HTMLParser
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import metrics
import performance as perf
import tearsheet
from market_data import MarketData

empyrical = pytest.importorskip("empyrical")

CASH = 10_000.0
CFG = {"initial_cash": CASH, "fee_rate": 0.001, "slippage_bps": 2.0}
START_MS = 1_609_459_200_000  # 2021-01-01 00:00 UTC
HOUR_MS = 3_600_000
FIGURES = ("equity", "excess", "monthly_excess", "monthly", "yearly", "rolling", "distribution", "underwater",
           "allocation", "contribution", "trading", "calls")  # in page order


def market_of(n_bars: int, n_pairs: int = 3, seed: int = 0) -> MarketData:
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0001, 0.01, (n_bars, n_pairs)), axis=0))
    open_ = close * np.exp(rng.normal(0, 0.002, (n_bars, n_pairs)))
    return MarketData(
        symbols=["BTC/USDT", "ETH/USDT", "BNB/USDT"][:n_pairs], timeframe="1h",
        open_time_ms=START_MS + HOUR_MS * np.arange(n_bars, dtype=np.int64),
        open=open_, high=np.maximum(open_, close), low=np.minimum(open_, close), close=close,
        volume=np.full((n_bars, n_pairs), 1e6), features=close[:, :, None].copy(), feature_names=["close"],
    )


def random_targets(market: MarketData, every: int = 12, seed: int = 1) -> np.ndarray:
    """A new allocation every ``every`` bars; each pair dropped to 0 with probability 0.4 (round trips)."""
    rng = np.random.default_rng(seed)
    n = market.n_pairs
    targets = np.full((market.n_bars, n + 1), np.nan)
    for t in range(0, market.n_bars, every):
        w = rng.dirichlet(np.ones(n + 1))
        w[:n] *= rng.random(n) > 0.4
        targets[t] = w / w.sum()
    return targets


def agent_with_portfolio(market: MarketData) -> tuple[perf.BacktestRecord, perf.Portfolio]:
    """The agent traded bar by bar with the backtest's timing, keeping the Portfolio (its round trips)."""
    targets = random_targets(market)
    pf = perf.make_portfolio(market.symbols, CFG)
    rec = perf.Recorder("agent", market, pf)
    act = ~np.isnan(targets).any(axis=1)
    for t in range(market.n_bars):
        fills = None
        if t > 0 and act[t - 1]:
            fills = pf.rebalance(targets[t - 1], market.open[t], ts_ms=int(market.open_time_ms[t]))
        rec.bar(t, fills)
    record = rec.record()
    record.calls = np.random.default_rng(2).integers(-1, 2, (market.n_bars, market.n_pairs)).astype(np.int8)
    return record, pf


@pytest.fixture(scope="module")
def long_case():
    market = market_of(24 * 150)  # 150 days: annualized figures shown
    agent, pf = agent_with_portfolio(market)
    records = {"agent": agent, **perf.run_benchmarks(market, CFG)}
    payload = tearsheet.compute(records, 8760.0, market.close, n_boot=500)
    return market, records, pf, payload


def equity_series(rec) -> pd.Series:
    return pd.Series(rec.equity, index=pd.to_datetime(rec.open_time_ms, unit="ms"))


# ------------------------------------------------------------------------------ the numbers
def test_key_metrics_and_intervals(long_case):
    market, records, _, payload = long_case
    for name, rec in records.items():
        r = equity_series(rec).pct_change().dropna().to_numpy()
        row = payload[name]
        assert row["total_return"] == pytest.approx(rec.equity[-1] / CASH - 1, rel=1e-9)
        assert row["max_drawdown"] == pytest.approx(empyrical.max_drawdown(r), abs=1e-12)
        assert row["cagr"] == pytest.approx(empyrical.annual_return(r, annualization=8760), rel=1e-9)
        if name == "cash":
            assert math.isnan(row["sharpe"]) and all(math.isnan(v) for v in row["sharpe_ci_95"])
            continue
        assert row["sharpe"] == pytest.approx(empyrical.sharpe_ratio(r, annualization=8760), rel=1e-9)
        # The interval holds the estimate and is about as wide as Lo's standard error says (the
        # curves' returns are close to i.i.d. here).
        low, high = row["sharpe_ci_95"]
        assert low < row["sharpe"] < high
        sr = np.mean(r) / np.std(r, ddof=1)
        lo_width = 2 * 1.96 * math.sqrt((1 + sr**2 / 2) / len(r)) * math.sqrt(8760)
        assert 0.7 * lo_width < high - low < 1.4 * lo_width
        sr_hat = np.mean(r) / np.std(r, ddof=1)
        z = sr_hat * math.sqrt(len(r) - 1) / math.sqrt(
            1 - stats.skew(r) * sr_hat + (stats.kurtosis(r, fisher=False) - 1) / 4 * sr_hat**2)
        assert row["probabilistic_sharpe"] == pytest.approx(stats.norm.cdf(z), abs=1e-9)


def test_relative_statistics(long_case):
    _, records, _, payload = long_case
    assert payload["relative_to"] == "equal_weight_rebalanced"
    assert set(payload["relative"]) == {"buy_hold_first", "equal_weight_hold", "equal_weight_rebalanced"}
    a = equity_series(records["agent"]).pct_change().dropna()
    for name, rel in payload["relative"].items():
        b = equity_series(records[name]).pct_change().dropna()
        alpha, beta = empyrical.alpha_beta(a.to_numpy(), b.to_numpy(), annualization=8760)
        assert rel["beta"] == pytest.approx(beta, rel=1e-9)
        assert rel["alpha"] == pytest.approx(alpha, rel=1e-9, abs=1e-12)
        assert rel["correlation"] == pytest.approx(a.corr(b), rel=1e-9)
        assert rel["tracking_error"] == pytest.approx((a - b).std() * math.sqrt(8760), rel=1e-9)
        active = a - b
        ir = active.mean() / active.std() * math.sqrt(8760)
        assert rel["information_ratio"] == pytest.approx(ir, rel=1e-9)
        final = records["agent"].equity[-1] / records[name].equity[-1] - 1
        assert rel["excess_return"] == pytest.approx(final, rel=1e-9)
        low, high = rel["sharpe_diff_ci_95"]
        assert low < payload["agent"]["sharpe"] - payload[name]["sharpe"] < high


def test_calendar_returns(long_case):
    _, records, _, payload = long_case
    for name in ("agent", "equal_weight_rebalanced"):
        eq = equity_series(records[name])
        # Month-end (and year-end) values against the previous ones, the first against the initial capital.
        for freq, key, fmt in (("ME", "monthly_returns", "%Y-%m"), ("YE", "yearly_returns", "%Y")):
            ends = eq.resample(freq).last()
            expected = ends / ends.shift(1, fill_value=CASH) - 1
            got = payload[key][name]
            assert list(got) == [d.strftime(fmt) for d in expected.index]
            np.testing.assert_allclose(list(got.values()), expected.to_numpy(), rtol=1e-9)
    assert payload["rolling_window_days"] == 30.0


def test_trading_statistics_against_position(long_case):
    market, records, pf, payload = long_case
    agent, stats_ = records["agent"], payload["trading"]["agent"]
    # Every rebalance pays fees here (fee_rate > 0): the bars with fees are the rebalances.
    assert stats_["rebalances"] == int(np.count_nonzero(agent.fees.sum(axis=1) > 0))
    per_bar = 0.5 * np.abs(agent.weights_after - agent.weights_before).sum(axis=1)
    assert stats_["mean_turnover_per_rebalance"] == pytest.approx(per_bar.sum() / stats_["rebalances"])
    # Round trips, win rate and holding times from the Portfolio's own PositionBook.
    trips = [trip for i in range(market.n_pairs) for trip in pf.book.closed_trips[i]]
    assert stats_["round_trips_closed"] == len(trips) > 10
    assert stats_["round_trip_win_rate"] == pytest.approx(np.mean([t.pnl > 0 for t in trips]))
    for i, symbol in enumerate(market.symbols):
        hours = [t.holding_ms / HOUR_MS for t in pf.book.closed_trips[i]]
        assert stats_["mean_holding_hours"][symbol] == pytest.approx(np.mean(hours))
    ours = sorted(t["pnl"] for t in metrics.round_trips(agent.weights_after, agent.pnl) if t["close"])
    np.testing.assert_allclose(ours, sorted(t.pnl for t in trips), rtol=1e-7, atol=1e-7)
    # How static: pandas' mean absolute deviation; the rebalanced benchmark is flagged, the agent not.
    w = pd.DataFrame(agent.weights_after)
    assert stats_["allocation_deviation"] == pytest.approx(float((w - w.mean()).abs().sum(axis=1).mean() / 2))
    assert not stats_["static_allocation"]
    assert payload["trading"]["equal_weight_rebalanced"]["static_allocation"]
    assert stats_["mean_weights"]["cash"] == pytest.approx(agent.weights_after[:, -1].mean())


def test_specialist_statistics(long_case):
    market, records, _, payload = long_case
    calls = records["agent"].calls
    for i, symbol in enumerate(market.symbols):
        right = scored = 0
        for t in range(market.n_bars - 1):
            move = market.close[t + 1, i] - market.close[t, i]
            if calls[t, i] != 0 and move != 0:
                scored += 1
                right += (calls[t, i] > 0) == (move > 0)
        spec = payload["specialists"][symbol]
        assert spec["hit_rate"] == pytest.approx(right / scored)
        assert spec["calls_scored"] == scored
        assert spec["buy_share"] + spec["hold_share"] + spec["sell_share"] == pytest.approx(1.0)


def test_drawdown_table_hand_made():
    # Equity at the closes of ten hourly bars from 2021-01-01 00:00: peaks at bars 1 and 4.
    equity = np.array([100.0, 120, 90, 60, 130, 130, 117, 104, 125, 110])
    curve = SimpleNamespace(equity=equity, open_time_ms=START_MS + HOUR_MS * np.arange(10))
    rows = tearsheet.drawdown_rows(curve, 8760.0)
    assert [(r["start"], r["trough"], r["recovery"]) for r in rows] == [
        ("2021-01-01 02:00", "2021-01-01 04:00", "2021-01-01 05:00"),
        ("2021-01-01 06:00", "2021-01-01 08:00", tearsheet.NOT_RECOVERED),
    ]
    assert [r["depth"] for r in rows] == pytest.approx([-0.5, 104 / 130 - 1])
    assert [r["length_bars"] for r in rows] == [2, 4]
    assert [r["length_days"] for r in rows] == pytest.approx([2 / 24, 4 / 24])
    assert rows[1]["recovery_ms"] is None
    # A curve that never falls has no drawdown; only the five deepest are kept.
    rising = SimpleNamespace(equity=np.arange(1.0, 5.0), open_time_ms=np.arange(4))
    assert tearsheet.drawdown_rows(rising, 8760) == []
    # Eight dips of 10%..17% below 100, each recovered on the next bar.
    saw = np.concatenate(([100.0], np.ravel([[100.0 - 10 - k, 100.0] for k in range(8)])))
    times = START_MS + HOUR_MS * np.arange(17)
    rows = tearsheet.drawdown_rows(SimpleNamespace(equity=saw, open_time_ms=times), 8760)
    assert len(rows) == 5 and rows[0]["depth"] == pytest.approx(-17 / 100)
    assert rows[-1]["depth"] == pytest.approx(-13 / 100)


def test_short_window_is_not_annualized(tmp_path):
    market = market_of(24 * 7, seed=3)
    agent, _ = agent_with_portfolio(market)
    records = {"agent": agent, **perf.run_benchmarks(market, CFG)}
    data = tearsheet.write(tmp_path, records, 8760.0, market.close, title="week", n_boot=200)
    assert data["annualized"] == "n/a (window < 90 days)"
    assert data["agent"]["cagr"] is None and data["agent"]["calmar"] is None
    assert data["relative"]["equal_weight_rebalanced"]["alpha"] is None
    assert data["agent"]["sharpe"] is not None and data["agent"]["total_return"] is not None
    assert data["rolling_window_days"] == pytest.approx(7 * 24 / 24 / 4 - 1 / 24 / 4, rel=0.02)
    page = (tmp_path / "report.html").read_text()
    assert page.count("n/a (window &lt; 90 days)") >= 2 * len(records)


@pytest.mark.parametrize("n_bars", [2, 3])
def test_tiny_windows_still_report(tmp_path, n_bars):
    # performance.py accepts ranges of 2 bars: no interval, no rolling value, but a whole report.
    market = market_of(n_bars, seed=4)
    agent, _ = agent_with_portfolio(market)
    records = {"agent": agent, **perf.run_benchmarks(market, CFG)}
    data = tearsheet.write(tmp_path, records, 8760.0, market.close, n_boot=200)
    assert data["agent"]["sharpe_ci_95"] == [None, None]
    assert data["header"]["bars"] == n_bars
    assert (tmp_path / "report.html").read_text().count("data-figure=") == len(FIGURES)


def test_refuses_empty_records():
    with pytest.raises(ValueError, match="records is empty"):
        tearsheet.compute({}, 8760.0, np.zeros((3, 1)))


# --------------------------------------------------------------------- files, header, HTML
@pytest.fixture(scope="module")
def report(tmp_path_factory, long_case):
    """performance.write_report of the long case with a run folder beside it (header provenance)."""
    market, records, _, _ = long_case
    base = tmp_path_factory.mktemp("tearsheet")
    run = base / "run_x"
    run.mkdir()
    (run / "config.yaml").write_text("run: {seed: 0}\n")
    (run / "manifest.json").write_text(json.dumps({"timeframe": "1h", "train_hash": "ab" * 32,
                                                   "source": {"kind": "synthetic", "seed": 7}}))
    trained = {"iterations": 40, "best_iteration": 35, "validation_metric": "sharpe",
               "best_validation_score": 1.25}
    (run / "metrics.json").write_text(json.dumps(trained))
    out = base / "out"
    notes = {"run": str(run), "range": "test split", "portfolio": CFG}
    perf.write_report(out, records, 8760.0, market.close, title="toy <run>", notes=notes)
    return out, run


def test_metrics_json_layout_and_header(report, long_case):
    out, run = report
    _, records, _, payload = long_case
    text = (out / "metrics.json").read_text()
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in metrics.json"))
    for name in records:
        assert set(metrics.METRIC_NAMES) <= set(data[name])
        assert len(data["drawdowns"][name]) <= 5
    assert data["agent"]["sharpe_ci_95"] == pytest.approx(payload["agent"]["sharpe_ci_95"], rel=0.2)
    assert set(data["relative"]["equal_weight_rebalanced"]) >= {
        "alpha", "beta", "correlation", "information_ratio", "tracking_error", "excess_return",
        "sharpe_diff_ci_95"}
    h = data["header"]
    assert h["run_id"] == "run_x" and h["checkpoint_iteration"] == 35 and h["validation_score"] == 1.25
    assert h["config_sha256"] == hashlib.sha256((run / "config.yaml").read_bytes()).hexdigest()
    assert h["train_data_sha256"] == "ab" * 32
    assert h["data_source"] == "synthetic market (seed 7)"  # the manifest's, no data_source passed
    assert h["bars"] == len(records["agent"].equity) and h["timeframe"] == "1h"
    assert h["range"] == "2021-01-01 00:00 .. 2021-05-31 00:00 UTC"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tearsheet.ROOT, capture_output=True, text=True)
    assert h["git_commit"].startswith(head.stdout.strip())
    assert h["costs"].startswith("fee 10 bps of each fill's notional; fixed slippage 2 bps")
    page = (out / "report.html").read_text()
    assert "toy &lt;run&gt;" in page and "iteration 35 of 40" in page and "Static allocation" not in page


class _Refs(HTMLParser):
    """Every tag and attribute of a page, to look for anything that would load from elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [(tag, k, v or "") for k, v in attrs]


def test_html_is_self_contained(report):
    out, _ = report
    page = (out / "report.html").read_text()
    refs = _Refs()
    refs.feed(page)
    assert not {"link", "script", "iframe", "object", "embed", "base"} & set(refs.tags)
    loading = ("src", "href", "srcset", "data", "poster", "action")
    loads = [(t, k, v) for t, k, v in refs.attrs if k in loading]
    assert loads and all(k == "src" and v.startswith("data:image/png;base64,") for _, k, v in loads)
    assert "url(" not in page and "@import" not in page and "http://" not in page and "https://" not in page
    figures = [v for t, k, v in refs.attrs if k == "data-figure"]
    assert tuple(figures) == FIGURES
    for _, _, v in loads:
        assert base64.b64decode(v.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not any(p.suffix == ".png" for p in out.iterdir())  # nothing beside the page to lose


# ---------------------------------------------------------------------------- real browser
_PROBE = """<script>
window.addEventListener("load", () => {
  const out = [];
  for (const img of document.querySelectorAll("img[data-figure]")) {
    const c = document.createElement("canvas");
    c.width = img.naturalWidth; c.height = img.naturalHeight;
    const ctx = c.getContext("2d");
    ctx.drawImage(img, 0, 0);
    const px = c.width * c.height ? ctx.getImageData(0, 0, c.width, c.height).data : [];
    let ink = 0; const colors = new Set();
    for (let i = 0; i < px.length; i += 4 * 7) {
      if (px[i] < 235 || px[i + 1] < 235 || px[i + 2] < 235) ink++;
      colors.add((px[i] << 16) | (px[i + 1] << 8) | px[i + 2]);
    }
    const box = img.getBoundingClientRect();
    out.push({id: img.dataset.figure, complete: img.complete, w: img.naturalWidth, h: img.naturalHeight,
              shown_w: box.width, ink: ink / Math.max(1, px.length / (4 * 7)), colors: colors.size});
  }
  const pre = document.createElement("pre");
  pre.id = "probe"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def chromium() -> str:
    """The Chromium binary; skip without one, but fail under CI, where .ci/run installs it."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    reason = "Chromium is not installed (apt-get install chromium; .ci/run installs it when missing)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def test_renders_in_headless_chromium(report, tmp_path):
    browser = chromium()
    out, _ = report
    page = (out / "report.html").read_text()
    probe = tmp_path / "probe.html"  # the report plus the test's own probe script, never shipped
    probe.write_text(page.replace("</body>", _PROBE + "</body>"))
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--window-size=1280,2000", "--virtual-time-budget=20000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=300,
    )
    assert '<pre id="probe">' in proc.stdout, f"no probe output from Chromium:\n{proc.stderr[-3000:]}"
    dumped = proc.stdout.split('<pre id="probe">', 1)[1].split("</pre>", 1)[0]
    found = json.loads(dumped.replace("&quot;", '"'))
    assert [f["id"] for f in found] == list(FIGURES)
    for f in found:
        assert f["complete"] and f["w"] > 300 and f["h"] > 100, f
        assert f["shown_w"] > 300, f  # laid out on the page, not collapsed
        assert f["ink"] > 0.02 and f["colors"] > 8, f  # something drawn, not a blank canvas
