"""`biofleet`: the one console command for ops. Subcommands live in small modules beside this one;
they import heavy libraries (torch, dlib, celery) inside the command, so `biofleet --help` is fast."""

import click

from cli import autoscale, calibrate, chaos, enroll_dir, face, gallery, privacy, stack, webhooks, workload


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """biofleet: face enrollment, verification and identification jobs."""


for module in (autoscale, calibrate, chaos, enroll_dir, face, gallery, privacy, stack, webhooks, workload):
    for command in module.COMMANDS:
        cli.add_command(command)


def main() -> None:
    cli()
