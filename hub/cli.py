"""The ``desilab`` command line: one traitlets application with subcommands.

Every subcommand is a :class:`DesilabCommand`, so each reads the same
``desilab_config.py`` (see ``desilab generate-config``) and every option is a
configurable trait whose help text is the reference documentation.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from traitlets import Unicode, default
from traitlets.config import Application, catch_config_error

#: subcommand name -> (import path of its Application class, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "up": ("desilab.hub.app.UpApp", "Run the platform: PostgreSQL, JupyterHub, proxy, services."),
    "generate-config": (
        "desilab.hub.app.GenerateConfigApp",
        "Write desilab_config.py with every option and its help text.",
    ),
    "mock": (
        "desilab.desi.cli.MockApp",
        "Write a mock DR1 (DR1 file formats and layout) with its truth tables.",
    ),
    "ingest": (
        "desilab.desi.cli.IngestApp",
        "Load a DR1 tree (or a mock) into the catalog; resumable, one transaction per file.",
    ),
    "query": ("desilab.desi.cli.QueryApp", "Run one read-only SQL query on the catalog."),
    "db": ("desilab.desi.cli.DbApp", "Catalog database administration (db add-user NAME)."),
    "voids": (
        "desilab.projects.voids.cli.VoidsApp",
        "Cosmic voids: find voids, classify galaxies, compare void and wall galaxies.",
    ),
    "outflows": (
        "desilab.projects.outflows.cli.OutflowsApp",
        "AGN outflows: batch BAL and [O III] fits (fit) and summary plots (report).",
    ),
    "anomalies": (
        "desilab.projects.anomalies.cli.AnomaliesApp",
        "Anomalous quasars: prepare spectra, train the VAE, score (Ray or local), evaluate.",
    ),
}


def default_home() -> Path:
    """DESILAB_HOME, else ``~/.local/share/desilab``."""
    env = os.environ.get("DESILAB_HOME")
    if env:
        return Path(env).expanduser().resolve()
    return Path("~/.local/share/desilab").expanduser().resolve()


class DesilabCommand(Application):
    """Base class of desilab's subcommands: shared home and config file."""

    name = "desilab"

    home = Unicode(
        help="""Folder for desilab's state: hub database, secrets, embedded PostgreSQL
        data, user homes. Default: $DESILAB_HOME, else ~/.local/share/desilab.""",
    ).tag(config=True)

    @default("home")
    def _home_default(self) -> str:
        return str(default_home())

    @default("subcommand_description")
    def _subcommand_description_default(self) -> str:
        # traitlets would print the app's name ("desilab-voids"), which is no command.
        command = self.name.replace("-", " ")
        return f"Run `{command} CMD --help` for the options of CMD."

    config_file = Unicode(
        "desilab_config.py",
        help="""The configuration file to load. Relative paths are tried in the current
        folder, then in the desilab home.""",
    ).tag(config=True)

    aliases = {
        "home": "DesilabCommand.home",
        "config": "DesilabCommand.config_file",
        "log-level": "Application.log_level",
    }

    @catch_config_error
    def initialize(self, argv: list[str] | None = None) -> None:
        super().initialize(argv)
        if self.subapp is not None:
            return
        self.load_desilab_config()

    def load_desilab_config(self) -> None:
        """Load the config file, letting the command line win over it."""
        cli_config = self.config.copy()
        path = Path(self.config_file)
        candidates = [path] if path.is_absolute() else [Path.cwd() / path, Path(self.home) / path]
        for candidate in candidates:
            if candidate.is_file():
                self.load_config_file(candidate.name, path=[str(candidate.parent)])
                self.log.info("Loaded config file %s", candidate)
                break
        self.update_config(cli_config)


class DesilabApp(DesilabCommand):
    """``desilab``: the entry point that dispatches to a subcommand."""

    description = "desilab: a JupyterHub research environment for DESI Data Release 1."
    subcommands = {name: (path, text) for name, (path, text) in SUBCOMMANDS.items()}

    def start(self) -> None:
        if self.subapp is None:
            self.print_subcommands()
            print("Run `desilab SUBCOMMAND --help` for the options of one.")
            self.exit(1)
        self.subapp.start()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    app = DesilabApp.instance()
    app.initialize(argv if argv is not None else sys.argv[1:])
    app.start()
