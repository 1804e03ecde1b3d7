"""Trade a saved run on paper, on Binance's spot testnet, or live: one decision per closed bar.

    python trade.py --run saved_models/NAME                        # paper (default), loops at each bar close
    python trade.py --run saved_models/NAME --once                 # one decision for the last closed bar
    python trade.py --run saved_models/NAME --once --dry-run       # print the orders, send and record nothing
    python trade.py --run saved_models/NAME --mode testnet --once  # keys from .env
    python trade.py --run saved_models/NAME --mode live            # needs live.confirm in the config

Settings: configs/trade.yaml (--config overrides it). The work is in trader.py; exit code 2 means
trading was refused (the message says why and what to do).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from settings import ConfigError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", required=True, help="saved run directory, e.g. saved_models/NAME")
    parser.add_argument("--mode", choices=("paper", "testnet", "live"), default="paper")
    parser.add_argument("--once", action="store_true", help="one decision for the last closed bar, then exit")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the orders a cycle would send; send nothing"
    )
    parser.add_argument("--config", default=None, help="trade settings (default: configs/trade.yaml)")
    parser.add_argument(
        "--account", default=None, help="account name (default: trade config, else <mode>-<run>)"
    )
    parser.add_argument(
        "--resume-halted", action="store_true", help="lift a halt (e.g. the drawdown stop) first"
    )
    parser.add_argument("--report", metavar="DIR", default=None, help="write the account's tearsheet to DIR")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import trader

    try:
        cfg = trader.load_config(args.config, {"account": args.account} if args.account else None)
        bot = trader.Trader(args.run, args.mode, cfg, dry_run=args.dry_run)
        if args.resume_halted:
            trader.store.resume(bot.engine, bot.account_name)
        if args.report:
            summary = bot.report(args.report)
            print(f"report: {args.report}/report.html {summary}")
        elif args.once or args.dry_run:
            result = bot.cycle()
            print(result.message if args.dry_run else f"{result.status}: {result.message or 'ok'}")
        else:
            trader.run_loop(bot)
    except (trader.TradeRefused, ConfigError, trader.store.TradingStateError) as exc:
        print(f"trade.py: refused: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
