"""`biofleet chaos`: the delivery guarantees under load, with workers killed and services restarted.

Runs its own embedded stack (Valkey with AOF, Postgres, a file blob store) in a temporary folder
with --workers batching workers, submits --jobs jobs through the submit path while killing a worker
(SIGKILL, main and pool processes) every --kill-worker-every seconds and restarting Redis and
Postgres once if asked, waits for every accepted job to be final, and prints one line.
--idle-phases stops the load for 30 s after a third of the jobs, restarts Redis inside the pause,
then submits 20 jobs at 1 job/s before the rest; --heavy-jobs N replaces N jobs with enrollments
of ten 5000x5000 JPEGs (a real face pasted into smooth noise):

    accepted N, succeeded A, failed B, lost L, duplicated D, callbacks expected C, delivered E, forged F

(after a line with the failures by error code). lost: accepted jobs not final after
--drain-timeout. duplicated: jobs applied twice, counted from template rows (more than the job
created) and result writes (two "job finished" lines in the worker logs). Every job has a
callback_url: --slow-callbacks of them (over two tenants) go to a loopback receiver that trickles
its answer, the rest to one that verifies each signature with standardwebhooks and the tenant's
secret (forged: it did not verify) and counts distinct webhook-ids per job (delivered, once the
outbox drained or after a bounded wait). The callback dispatcher runs as its own process.
Exit status 1 when lost, duplicated or forged is not 0, or delivered < expected.
"""

import click


@click.command()
@click.option("--jobs", "job_count", default=400, show_default=True, help="Jobs to submit.")
@click.option("--kill-worker-every", default=0.0, show_default=True, help="SIGKILL a worker every S seconds; 0: never.")
@click.option("--restart-redis-once", is_flag=True, help="Restart Redis (AOF) once, under load.")
@click.option("--restart-postgres-once", is_flag=True, help="Restart Postgres once, under load.")
@click.option("--workers", default=2, show_default=True, help="Worker processes.")
@click.option("--rate", default=8.0, show_default=True, help="Jobs submitted per second.")
@click.option("--drain-timeout", default=600.0, show_default=True, help="Seconds to wait for the last jobs.")
@click.option("--keep", is_flag=True, help="Keep the temporary folder (worker logs) and print its path.")
@click.option(
    "--idle-phases",
    is_flag=True,
    help="After a third of the jobs, stop the load for 30 s with a Redis restart inside, then 20 jobs at 1/s, then the rest.",
)
@click.option("--heavy-jobs", default=0, show_default=True, help="Enrollments of ten 5000x5000 images mixed in.")
@click.option(
    "--slow-callbacks", default=0, show_default=True, help="Jobs whose callback receiver trickles its answer."
)
def chaos(job_count, kill_worker_every, restart_redis_once, restart_postgres_once, workers, rate, drain_timeout, keep,
          idle_phases, heavy_jobs, slow_callbacks):  # fmt: skip
    """Run the stack under load and faults; print accepted/succeeded/failed/lost/duplicated."""
    from cli.chaos_run import ChaosOptions, run_chaos

    options = ChaosOptions(
        jobs=job_count, kill_every_s=kill_worker_every, restart_redis=restart_redis_once,
        restart_postgres=restart_postgres_once, workers=workers, rate=rate, drain_timeout_s=drain_timeout,
        keep=keep, idle_phases=idle_phases, heavy_jobs=heavy_jobs, slow_callbacks=slow_callbacks,
    )  # fmt: skip
    report = run_chaos(options)
    click.echo(f"failed by code: {report.codes()}")
    click.echo(report.line())
    if not report.ok():
        raise SystemExit(1)


COMMANDS = [chaos]
