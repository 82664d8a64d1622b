"""What every command shares: --config/--set, the placeholder-image switch, loading the configuration."""

from __future__ import annotations

import argparse
import dataclasses

from platepipe.pipeline.config import Config, load_config


def config_args() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("configuration")
    group.add_argument("--config", metavar="FILE", help="YAML file with the settings to change")
    group.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                       help="override one setting, e.g. --set data.n_images=500 (repeatable)")
    return parent


def placeholder_arg(parser) -> None:
    parser.add_argument("--allow-placeholder-images", action="store_true",
                        help="go on although kfp.image or deploy.image is a local placeholder or unset (a cluster "
                             "that has the image under that name, or a pipeline that never deploys)")


def with_given(section, **given):
    """The configuration section with the command-line values given (None: not given, the section's stays)."""
    return dataclasses.replace(section, **{k: v for k, v in given.items() if v is not None})


def load(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)
