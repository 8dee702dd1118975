from bench.cli import main
from kafka_relay.cli import run_cli

raise SystemExit(run_cli(main))
