"""SLURM preflight: what would stop a cluster run, found before any job is submitted.

Run by the workflow at start-up (rules/common.smk, ``slurm_preflight``) whenever the rules carry
SLURM resources (a profile such as ``profiles/slurm``), in real and dry runs alike:

* **placeholders**: a resource value still holding ``CHANGE_ME`` (account, partitions), named by
  rule and key;
* **requests no node can satisfy** (when ``sinfo`` answers): each rule's partition, CPUs per
  task, memory, GPUs and runtime against the nodes of its partition (``sinfo -N``); SLURM itself
  would reject such a job at submission or leave it pending forever (``Reason=PartitionConfig``);
* **job status without accounting**: the SLURM executor plugin asks ``squeue`` for job states
  (profile ``slurm-status-command: squeue``) but falls back to ``sacct`` when the controller's
  ``MinJobAge`` is below three status intervals; without an accounting database ``sacct`` fails
  and the run waits forever, so that combination is refused with what to change.

Pure functions over the commands' text (tested with fake outputs); :func:`query` runs them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

PLACEHOLDER = "CHANGE_ME"
"""The marker of a value the user must set (profiles/slurm/config.yaml)."""

PLACEHOLDER_PREFIX = "/path/to/"
"""config/voxceleb.yaml's stand-in for a local path the user must set."""


def placeholder_keys(node: object, where: str) -> list[tuple[str, str]]:
    """[(dotted key, value)] of every string under config ``node`` (dict, list or value; ``where`` is
    its dotted key) still holding a :data:`PLACEHOLDER_PREFIX` path, in file order."""
    if isinstance(node, dict):
        return [hit for key, value in node.items() for hit in placeholder_keys(value, f"{where}.{key}")]
    if isinstance(node, list):
        return [hit for i, value in enumerate(node) for hit in placeholder_keys(value, f"{where}[{i}]")]
    return [(where, node)] if isinstance(node, str) and node.startswith(PLACEHOLDER_PREFIX) else []


SINFO_ARGS = ("sinfo", "--Node", "--noheader", "--format=%P|%N|%c|%m|%G|%l")
"""One line per (partition, node): partition (``*`` marks the default), node, CPUs, memory (MB),
generic resources, partition time limit."""

STATUS_INTERVAL_S = 40
"""The executor plugin's default first status interval (``slurm-init-seconds-before-status-checks``);
it uses ``squeue`` only when MinJobAge >= 3 x this."""

COMMAND_TIMEOUT_S = 15
"""How long a SLURM query may take before the preflight gives up on it (a controller that is down
makes the client retry for a while)."""


@dataclass(frozen=True)
class Node:
    """One node of one partition as ``sinfo --Node`` lists it. ``mem_mb`` in MB (SLURM's MiB),
    ``time_limit_min`` the partition's limit in minutes (None: unlimited)."""

    partition: str
    default: bool
    name: str
    cpus: int
    mem_mb: int
    gpus: int
    time_limit_min: int | None


@dataclass(frozen=True)
class Request:
    """What one rule's jobs ask SLURM for: ``partition`` (None: the cluster's default), CPUs per
    task, memory in MB, GPUs (the ``gpu`` resource), runtime in minutes; None where unset."""

    rule: str
    partition: str | None
    cpus: int | None
    mem_mb: int | None
    gpus: int | None
    runtime_min: int | None

    @classmethod
    def from_resources(cls, rule: str, resources: Mapping[str, object]) -> Request:
        """The request of Snakemake resources ``{key: value}`` (slurm_partition, cpus_per_task,
        mem_mb, gpu, runtime); a value that is not a whole number counts as unset."""

        def number(key: str) -> int | None:
            value = resources.get(key)
            return int(value) if isinstance(value, int) or (isinstance(value, str) and value.isdigit()) else None

        partition = resources.get("slurm_partition")
        return cls(
            rule,
            str(partition) if partition else None,
            number("cpus_per_task"),
            number("mem_mb"),
            number("gpu"),
            number("runtime"),
        )


def parse_time_minutes(text: str) -> int | None:
    """A SLURM time limit in minutes, rounded up: ``infinite``/``UNLIMITED`` -> None;
    ``D-HH:MM:SS``, ``D-HH``, ``HH:MM:SS``, ``MM:SS`` or ``MM``. Raises ValueError otherwise."""
    text = text.strip()
    if text.lower() in ("infinite", "unlimited"):
        return None
    days = 0
    if "-" in text:
        d, text = text.split("-", 1)
        days = int(d)
        parts = [int(p) for p in text.split(":")] + [0] * (3 - len(text.split(":")))  # D-H[:M[:S]]
        hours, minutes, seconds = parts[:3]
    else:
        parts = [int(p) for p in text.split(":")]
        if len(parts) == 3:
            hours, minutes, seconds = parts
        elif len(parts) == 2:
            hours, (minutes, seconds) = 0, parts
        elif len(parts) == 1:
            hours, minutes, seconds = 0, parts[0], 0
        else:
            raise ValueError(f"not a SLURM time: {text!r}")
    return days * 1440 + hours * 60 + minutes + (1 if seconds else 0)


def parse_gres_gpus(text: str) -> int:
    """GPUs in a node's GRES string: ``gpu:4``, ``gpu:a100:4(S:0-1)``, ``gpu:2,shard:8``,
    ``(null)`` -> 4, 4, 2, 0 (the counts of every ``gpu`` entry summed)."""
    total = 0
    for entry in re.split(r",(?![^()]*\))", text.strip()):
        fields = re.sub(r"\(.*?\)", "", entry).split(":")
        if fields[0] == "gpu" and len(fields) >= 2:
            count = re.match(r"\d+", fields[-1])
            total += int(count.group()) if count else 1
    return total


def parse_sinfo(text: str) -> list[Node]:
    """Nodes from the output of :data:`SINFO_ARGS` (one ``P|N|c|m|G|l`` line per partition and node).
    Raises ValueError naming the line when it does not have that form."""
    nodes = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.strip().split("|")
        if len(fields) != 6:
            raise ValueError(f"sinfo line {lineno}: expected 6 '|'-separated fields, got {line!r}")
        partition, name, cpus, mem, gres, limit = fields
        try:
            nodes.append(
                Node(
                    partition.rstrip("*"),
                    partition.endswith("*"),
                    name,
                    int(cpus.rstrip("+")),
                    int(mem.rstrip("+")),
                    parse_gres_gpus(gres),
                    parse_time_minutes(limit),
                )
            )
        except ValueError as err:
            raise ValueError(f"sinfo line {lineno}: {err} in {line!r}") from None
    return nodes


def placeholder_findings(resources: Mapping[str, Mapping[str, object]]) -> list[str]:
    """``key = value (rules: ...)`` for every resource value holding :data:`PLACEHOLDER` in
    ``{rule: {key: value}}``, one line per key and value (``every rule`` when all rules share it)."""
    rules_of: dict[tuple[str, str], list[str]] = {}
    for rule, res in resources.items():
        for key, value in res.items():
            if isinstance(value, str) and PLACEHOLDER in value:
                rules_of.setdefault((key, value), []).append(rule)
    return [
        f"{key} = {value} ({'every rule' if len(rules) == len(resources) > 1 else 'rules: ' + ', '.join(rules)})"
        for (key, value), rules in rules_of.items()
    ]


def _short(request: Request) -> str:
    asks = [f"partition {request.partition or '(default)'}"]
    for label, value in (
        ("CPUs", request.cpus),
        ("MB memory", request.mem_mb),
        ("GPUs", request.gpus),
        ("min runtime", request.runtime_min),
    ):
        if value:
            asks.append(f"{value} {label}")
    return ", ".join(asks)


def _fits(req: Request, node: Node) -> bool:
    """Whether ``node`` has the CPUs, memory, GPUs and time limit that ``req`` asks for."""
    return (
        (req.cpus or 1) <= node.cpus
        and (req.mem_mb or 0) <= node.mem_mb
        and (req.gpus or 0) <= node.gpus
        and (node.time_limit_min is None or (req.runtime_min or 0) <= node.time_limit_min)
    )


def unrunnable(requests: Iterable[Request], nodes: Sequence[Node]) -> list[str]:
    """One line per rule that no node of its partition can run, naming what is too large
    (``cpus_per_task``, ``mem_mb``, ``gpu``, ``runtime``) against the largest the partition offers,
    or the unknown partition. Requests with a placeholder partition are skipped (reported as
    placeholders)."""
    partitions: dict[str, list[Node]] = {}
    for node in nodes:
        partitions.setdefault(node.partition, []).append(node)
    default = next((n.partition for n in nodes if n.default), None)
    out = []
    for req in requests:
        if req.partition and PLACEHOLDER in req.partition:
            continue
        name = req.partition or default
        members = partitions.get(name or "")
        if not members:
            known = ", ".join(sorted(partitions)) or "none"
            out.append(
                f"{req.rule} ({_short(req)}): slurm_partition = {req.partition or '(cluster default)'} is not a partition "
                f"of this cluster (partitions: {known})"
            )
            continue

        if any(_fits(req, n) for n in members):
            continue
        limits = {
            "cpus_per_task": (req.cpus, max(n.cpus for n in members), "CPUs"),
            "mem_mb": (req.mem_mb, max(n.mem_mb for n in members), "MB"),
            "gpu": (req.gpus, max(n.gpus for n in members), "GPUs"),
        }
        unlimited = any(n.time_limit_min is None for n in members)
        limit_min = None if unlimited else max(n.time_limit_min for n in members)  # type: ignore[type-var]
        reasons = [
            f"{key} = {want} but its nodes have at most {most} {unit}"
            for key, (want, most, unit) in limits.items()
            if want and want > most
        ]
        if limit_min is not None and req.runtime_min and req.runtime_min > limit_min:
            reasons.append(f"runtime = {req.runtime_min} min but the partition's time limit is {limit_min} min")
        if not reasons:
            reasons.append("no single node offers all of it at once")
        out.append(f"{req.rule} ({_short(req)}) cannot run on partition {name}: " + "; ".join(reasons))
    return out


def parse_min_job_age(scontrol_config: str) -> int | None:
    """MinJobAge in seconds from ``scontrol show config`` (``MinJobAge = 300 sec``); None if absent."""
    match = re.search(r"^\s*MinJobAge\s*=\s*(\d+)\s*(\w*)", scontrol_config, re.MULTILINE)
    if not match:
        return None
    value, unit = int(match.group(1)), match.group(2).lower()
    return value * 3600 if unit.startswith("h") else value * 60 if unit.startswith("min") else value


def status_problem(
    status_command: str | None, sacct_error: str | None, min_job_age_s: int | None, interval_s: int = STATUS_INTERVAL_S
) -> str | None:
    """Why the executor plugin could not follow jobs, or None. ``status_command`` is the profile's
    ``slurm-status-command`` (None: the plugin chooses, i.e. ``sacct`` where it exists);
    ``sacct_error`` the error of a trial ``sacct`` call (None: it works); ``min_job_age_s`` the
    controller's MinJobAge."""
    if sacct_error is None:
        return None
    floor = 3 * interval_s
    fix = (
        f"set `slurm-status-command: squeue` in the profile (profiles/slurm/config.yaml does) and make sure "
        f"the cluster keeps finished jobs visible to squeue for at least {floor} s (slurm.conf MinJobAge >= {floor}; "
        f"SLURM's default is 300)"
    )
    if status_command != "squeue":
        return f"`sacct` fails on this cluster ({sacct_error}), so job states cannot be read from it: {fix}"
    if min_job_age_s is None or min_job_age_s < floor:
        return (
            f"`sacct` fails on this cluster ({sacct_error}) and MinJobAge is {min_job_age_s} s, below the "
            f"{floor} s at which the SLURM executor trusts squeue (it would fall back to sacct and wait "
            f"forever): raise MinJobAge in slurm.conf to >= {floor}, or enable accounting (slurmdbd)"
        )
    return None


def _run(args: Sequence[str]) -> tuple[int, str]:
    """(exit status, stdout or stderr) of a SLURM command; (127, why) when it is missing or hangs."""
    if shutil.which(args[0]) is None:
        return 127, f"{args[0]} not found"
    try:
        proc = subprocess.run(
            list(args), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        return 124, f"{' '.join(args)} did not answer within {COMMAND_TIMEOUT_S} s"
    return proc.returncode, (proc.stdout if proc.returncode == 0 else (proc.stderr or proc.stdout).strip())


def query(nodes: bool = True, status: bool = True) -> tuple[list[Node] | None, str | None, int | None, str]:
    """Ask the cluster: (nodes, sacct error or None, MinJobAge or None, note); ``nodes`` and
    ``status`` choose what to ask (nodes: ``sinfo``; status: ``sacct`` and ``scontrol``). Nodes
    are None when not asked or when ``sinfo`` is missing or fails; ``note`` then says why."""
    found, note = None, ""
    if nodes:
        rc, out = _run(SINFO_ARGS)
        if rc == 0:
            found = parse_sinfo(out)
        else:
            note = out if rc == 127 else f"sinfo failed: {out}"
    sacct_error = min_job_age = None
    if status:
        rc, out = _run(("sacct", "--noheader", "--allusers", "--starttime=now", "--format=JobID"))
        sacct_error = None if rc == 0 else (out.splitlines() or ["no output"])[-1]
        rc, out = _run(("scontrol", "show", "config"))
        min_job_age = parse_min_job_age(out) if rc == 0 else None
    return found, sacct_error, min_job_age, note


def report(placeholders: Sequence[str], problems: Sequence[str], status: str | None) -> str:
    """The preflight's message (empty when nothing is wrong)."""
    parts = []
    if placeholders:
        parts.append(
            "placeholders left in the SLURM profile (key = value (rules); edit the profile, e.g. "
            "profiles/slurm/config.yaml):\n" + "\n".join(f"  {p}" for p in placeholders)
        )
    if problems:
        parts.append(
            "rules that no node of their partition can run (change the rule's set-resources entry):\n"
            + "\n".join(f"  {p}" for p in problems)
        )
    if status:
        parts.append(f"job status: {status}")
    return "\n".join(parts)
