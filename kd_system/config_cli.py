"""``kd-system config schema`` and ``kd-system config show``: the run config's JSON Schema, for
editors checking YAML files, and the config a run would get, resolved from file and overrides."""
from __future__ import annotations

import argparse
import json
from typing import Any

import yaml

# Editors pick the draft from this key; pydantic writes Draft 2020-12 schemas.
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def run_config_schema() -> dict[str, Any]:
    from kd_system.config import RunConfig
    return {"$schema": SCHEMA_DIALECT, **RunConfig.model_json_schema()}


def _schema(args: argparse.Namespace) -> int:
    print(json.dumps(run_config_schema(), indent=2))
    return 0


def _show(args: argparse.Namespace) -> int:
    from kd_system.config import load_config, to_dict
    # env:NAME references are printed as written: showing a config never reveals a secret.
    print(yaml.safe_dump(to_dict(load_config(args.config, args.set)), sort_keys=False), end="")
    return 0


def register_cli(commands: argparse._SubParsersAction) -> None:
    config = commands.add_parser("config", help="print the run config's JSON Schema, or a resolved run config")
    actions = config.add_subparsers(dest="config_command", required=True)
    schema = actions.add_parser("schema", help="print the JSON Schema of a run config (point your editor's YAML "
                                               "support at it)")
    schema.set_defaults(func=_schema)
    show = actions.add_parser("show", help="print the config a run would get, as YAML, after defaults and --set")
    show.add_argument("--config", help="YAML run config, or a shipped config name, e.g. cartpole-v1")
    show.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                      help="override one setting, e.g. --set learner.lr=3e-4 (repeatable)")
    show.set_defaults(func=_show)
