from bench.cli import main
from kafka_relay.tools.cli import run_cli

raise SystemExit(run_cli(main))
