# Provenance (ssrl.provenance; docs/internals.md "Provenance").
#   results/<run>/provenance.json               this invocation: commit, uncommitted changes, resolved
#                                               config + hash, profile, command, reproduce command,
#                                               software, hardware, start/end time, status
#   results/<run>/provenance/config-<hash>.json every resolved config the run was invoked with
# Written by the Snakefile's onstart / onsuccess / onerror handlers (main process, only when an
# invocation has jobs to run; not on -n): no rule reads or writes them, so a new commit reruns nothing.
# The stamp (commit, dirty, diff hash, config hash) reaches every job through the environment variable
# ssrl.provenance.STAMP_ENV, computed here once in the main process: jobs (also SLURM jobs, which
# inherit the environment and re-read this file) write it beside their outputs (train_record.json).
# An environment variable is no rerun trigger; a params value would rerun every stage on each commit.

from ssrl import provenance as _provenance  # the library of this checkout (rules/common.smk)

if workflow.is_main_process:
    PROVENANCE_STAMP = _provenance.make_stamp(workflow.basedir, config)
    os.environ[_provenance.STAMP_ENV] = json.dumps(PROVENANCE_STAMP)


def provenance_start():
    """onstart: write results/<run>/provenance.json for this invocation (status running)."""
    executor = getattr(workflow.executor_plugin, "name", None)
    profile = _provenance.profile_from_argv(sys.argv, os.environ)
    config_args = list(workflow.config_settings.config_args or [])  # --config KEY=VALUE ...
    cwd = os.getcwd()  # the working directory (-d)
    reproduce = _provenance.reproduce_command(profile, workflow.config_settings.configfiles, config_args, cwd)
    # (a dict, not keyword arguments: a line starting with `workdir=` would read as Snakemake's keyword)
    record = {
        "stamp": PROVENANCE_STAMP,
        "config": config,
        "profile": profile,
        "argv": sys.argv,
        "executor": executor,
        "reproduce": reproduce,
        "workdir": cwd,
    }
    _provenance.start_record(RUN_DIR, **record)


def provenance_finish(status):
    """onsuccess / onerror: the end time and status of this invocation."""
    _provenance.finish_record(RUN_DIR, status)
