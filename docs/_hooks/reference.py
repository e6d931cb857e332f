"""mkdocs hook: the command-line and configuration reference pages, generated at build time from
the parser (``vox2vox.cli.build_parser``) and the config's own defaults and descriptions
(``vox2vox.config``), so the manual cannot drift from the code."""

from __future__ import annotations

import argparse
import dataclasses
import json

from mkdocs.structure.files import File, Files

from vox2vox.cli import build_parser
from vox2vox.config import DESCRIPTIONS, Config

CLI_PAGE = "cli.md"
CONFIG_PAGE = "configuration.md"


def on_files(files: Files, config) -> Files:
    files.append(File.generated(config, CLI_PAGE, content=cli_reference()))
    files.append(File.generated(config, CONFIG_PAGE, content=config_reference()))
    return files


def cli_reference() -> str:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {choice.dest: choice.help for choice in commands._choices_actions}
    lines = ["# Command-line reference", "",
             "Generated from the `vox2vox` parser: each command's `--help`, as the command prints it.", "",
             "| command | what it does |", "|---|---|"]
    lines += [f"| [`{name}`](#vox2vox-{name}) | {_cell(summaries.get(name, ''))} |" for name in commands.choices]
    lines += ["", "## vox2vox", "", "```text", parser.format_help().rstrip(), "```", ""]
    for name, sub in commands.choices.items():
        lines += [f"## vox2vox {name}", "", _cell(summaries.get(name, "")), "", "```text",
                  sub.format_help().rstrip(), "```", ""]
    return "\n".join(lines)


def config_reference() -> str:
    config = Config()
    plain = config.to_dict()
    lines = ["# Configuration reference", "",
             "Generated from the configuration's own defaults and descriptions (`vox2vox config` prints the "
             "same). Give a `.toml` or `.json` file with `--config` (sections as tables) and override single "
             "keys with `--set section.key=value`; the defaults are the paper's settings (`--config paper`).", ""]
    for section in dataclasses.fields(config):
        values = getattr(config, section.name)
        lines += [f"## [{section.name}]", "", "| key | default | meaning |", "|---|---|---|"]
        for item in dataclasses.fields(values):
            key = f"{section.name}.{item.name}"
            default = json.dumps(plain[section.name][item.name])
            lines.append(f"| `{key}` | `{_cell(default)}` | {_cell(DESCRIPTIONS.get(key, ''))} |")
        lines.append("")
    return "\n".join(lines)


def _cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")
