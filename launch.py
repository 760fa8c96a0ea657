#!/usr/bin/env python3
"""Start a script on one or several processes / nodes (HIRL-style flags, torchrun underneath).

Usage::

    python3 launch.py --launch tools/train.py -c configs/x.yaml              # all GPUs of this node
    python3 launch.py --launch tools/train.py --np 2 -c configs/x.yaml       # 2 processes
    python3 launch.py --launch tools/train.py --nn 2 --nr 0 --port 29500 -ma 10.0.0.1 -c ...  # node 0
    python3 launch.py --launch tools/train.py --nn 2 --nr 1 --port 29500 -ma 10.0.0.1 -c ...  # node 1
    python3 launch.py --launch tools/train.py --dist 0 -c ...                # one plain process
    python3 launch.py --launch tools/train.py --slurm --partition p --nodes 2 --ngpus 8 -c ...

Every argument that is not a launcher flag reaches the script unchanged, as one argv element each
(no shell re-splitting). Arguments after a bare ``--`` always go to the script, which is the way to
pass a script flag that has the same name as a launcher flag (e.g. a script's own ``--port``).

Distribution (``--dist 1``) goes through PyTorch's elastic launcher (the API behind torchrun) with
the static rendezvous: node ``--nr`` of ``--nn`` meets the others at ``-ma:--port``. Each worker
runs ``python -u SCRIPT args...`` (``-u`` as torchrun does, so logs are not held in buffers) with
RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT set;
``hirl_like.engine.dist_setup.init_distributed`` reads them. A failed rank ends the whole job on
its node (the others are terminated), one line per failed rank is printed and the launcher exits
with the root-cause rank's exit code (128 + signal number for a rank killed by a signal). Other
nodes learn of it when their ranks' next collective fails (or times out): the static rendezvous
has no cross-node failure channel, exactly as with torchrun.

Errors stay one line: torch elastic's own log lines about the failure ("failed (exitcode: ...)",
"Sending process ... closing signal SIGTERM") are dropped, since the per-rank lines say the same.
Exit code 2 is the toolbox's bad-input code (a config key, value or path): the script has already
printed its one-line ``error: ...``, so the launcher adds nothing and exits 2, and the output is
what ``python SCRIPT ...`` alone prints.

Worker environment: the repository root is prepended to PYTHONPATH (so scripts can
``import hirl_like`` without installing it), and OMP_NUM_THREADS, if unset, becomes
max(1, cpus // processes per node): torchrun's 1 under-uses CPU-only runs, and splitting the
cores avoids the oversubscription that torchrun's warning is about.

``--slurm`` submits the same job through submitit instead (one task per process; see
``SubmititTask``). On a real cluster the launcher prints the job id and log folder and returns
(``--wait`` to block); ``--slurm_cluster local`` / ``debug`` always wait and return 1 if a task failed.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent
MONITOR_INTERVAL_S = 0.5  # how often the agent polls its workers: a dead rank is noticed within this
RUN_ID = "hirl_like"  # static rendezvous store prefix; must be identical on every node
SLURM_CLUSTERS = ("slurm", "local", "debug")
INPUT_ERROR_EXIT_CODE = 2  # the toolbox's scripts exit 2 after printing a one-line "error: ..."
# torch elastic's log lines that repeat what the per-rank failure lines say (their format strings)
REPLACED_TORCH_LOGS = ("failed (exitcode", "Sending process %s closing signal", "Closing process %s via signal")
TORCH_PROCESS_LOGGER = "torch.distributed.elastic.multiprocessing.api"
SEVERAL_NODES_NEED_PORT = (
    "several nodes need --port (and -ma/--master_address) so that every node meets at the same place"
)


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: a script flag such as --n or --portion must not be taken for --nn/--port.
    p = argparse.ArgumentParser(
        description="Launch SCRIPT on one or more processes/nodes; unknown arguments go to SCRIPT.",
        allow_abbrev=False,
    )
    p.add_argument("--launch", required=True, metavar="SCRIPT", help="python script to run")
    p.add_argument(
        "--np", "--ngpus", "--gpus_per_node", dest="np", type=int, default=None,
        help="processes per node (default: number of visible GPUs, or 1 without GPUs)",
    )
    p.add_argument("--nn", "--nodes", dest="nn", type=int, default=1, help="number of nodes")
    p.add_argument("--nr", type=int, default=0, help="rank of this node, 0 <= nr < nn")
    p.add_argument(
        "--port", type=int, default=None, help="rendezvous port (default: a free one; required with --nn > 1)"
    )
    p.add_argument("-ma", "--master_address", default="127.0.0.1", help="address of node 0")
    p.add_argument("--dist", type=int, choices=(0, 1), default=1, help="0: run SCRIPT as one plain process")
    p.add_argument("--max_restarts", type=int, default=0, help="restarts of the worker group after a failure")

    s = p.add_argument_group("slurm (submitit)")
    s.add_argument("--slurm", action="store_true", help="submit through submitit instead of running here")
    s.add_argument("--slurm_cluster", choices=SLURM_CLUSTERS, default="slurm",
                   help="'local': submitit's LocalExecutor (this machine), 'debug': in this process")
    s.add_argument("--partition", default=None, help="slurm partition")
    s.add_argument("--timeout", type=int, default=2800, help="job time limit in minutes")
    s.add_argument("--mem_gb", type=int, default=None, help="memory per node in GB (default 40 per GPU)")
    s.add_argument("--cpus_per_task", type=int, default=10, help="CPU cores per process")
    s.add_argument("--constraint", default="", help="slurm --constraint, e.g. volta32gb")
    s.add_argument("--comment", default="", help="slurm --comment")
    s.add_argument("--exclude", default="", help="nodes to exclude, e.g. node[1-3]")
    s.add_argument("--job_name", default="hirl_like", help="slurm job name")
    s.add_argument("--job_dir", default="./output/slurm/%j", help="submitit folder; %%j = job id")
    s.add_argument("--wait", action="store_true",
                   help="wait for the slurm job to end (always on for --slurm_cluster local/debug)")
    return p


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Cut at the first bare ``--``: what follows goes to the script verbatim."""
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Return (launcher options, script argv without the script path)."""
    parser = build_parser()
    head, tail = split_argv(argv)
    # parse_known_args keeps unknown flags and values in their original order as separate
    # elements, so `key='a b'` or `x=[0.32, 1.0]` reach the script untouched.
    ns, unknown = parser.parse_known_args(head)
    script_args = unknown + tail

    if not os.path.isfile(ns.launch):
        parser.error(f"--launch {ns.launch}: no such file")
    if ns.nn < 1:
        parser.error(f"--nn {ns.nn}: need at least 1 node")
    if not 0 <= ns.nr < ns.nn:
        parser.error(f"--nr {ns.nr}: node rank must be in [0, {ns.nn - 1}] for --nn {ns.nn}")
    if ns.np is not None and ns.np < 1:
        parser.error(f"--np {ns.np}: need at least 1 process per node")
    if ns.max_restarts < 0:
        parser.error(f"--max_restarts {ns.max_restarts}: must be >= 0")
    if ns.port is not None and not 0 < ns.port < 65536:
        parser.error(f"--port {ns.port}: must be in 1..65535")
    if ns.dist == 1 and not ns.slurm and ns.nn > 1 and ns.port is None:
        parser.error(SEVERAL_NODES_NEED_PORT)
    if ns.slurm and ns.slurm_cluster in ("local", "debug") and ns.nn != 1:
        parser.error(f"--slurm_cluster {ns.slurm_cluster} runs on this machine only: use --nodes 1")
    return ns, script_args


def default_nproc() -> int:
    import torch  # imported lazily so that argument errors come back without torch's start-up time

    return torch.cuda.device_count() or 1


def free_port(host: str = "127.0.0.1") -> int:
    # The OS picks a free port; released right away for the rendezvous to bind (tiny race, as in
    # every launcher that does this; pass --port to avoid it).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_env(nproc_per_node: int) -> dict[str, str]:
    """Environment every worker inherits (see module docstring)."""
    env = dict(os.environ)
    old = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + old if old else "")
    env.setdefault("OMP_NUM_THREADS", str(max(1, _cpu_count() // nproc_per_node)))
    return env


# ----------------------------------------------------------------------------------------------
# --dist 0: one plain process
# ----------------------------------------------------------------------------------------------
def run_single(script: str, script_args: list[str]) -> int:
    proc = subprocess.run([sys.executable, script, *script_args], env=worker_env(1))
    return _exit_code(proc.returncode)


def _exit_code(returncode: int) -> int:
    # A child killed by signal S has returncode -S; shells report that as 128 + S.
    return 128 - returncode if returncode < 0 else returncode


# ----------------------------------------------------------------------------------------------
# --dist 1: torch elastic launcher (torchrun's API), static rendezvous
# ----------------------------------------------------------------------------------------------
class DropRepeatedFailureLogs(logging.Filter):
    """Drops torch elastic's records of a worker's failure or termination (see module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(REPLACED_TORCH_LOGS)


def quiet_torch_failure_logs() -> None:
    """Install :class:`DropRepeatedFailureLogs` on the logger of torch's process manager (once)."""
    logger = logging.getLogger(TORCH_PROCESS_LOGGER)
    if not any(isinstance(f, DropRepeatedFailureLogs) for f in logger.filters):
        logger.addFilter(DropRepeatedFailureLogs())


def run_elastic(ns: argparse.Namespace, script_args: list[str]) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    nproc = ns.np if ns.np is not None else default_nproc()
    port = ns.port if ns.port is not None else free_port(ns.master_address)
    # Workers inherit the agent's environment (torchrun sets OMP_NUM_THREADS the same way).
    os.environ.update(worker_env(nproc))
    # Same mapping as torchrun (torch/distributed/run.py: config_from_args) for
    # --rdzv-backend static --nnodes nn --node-rank nr --master-addr ma --master-port port.
    config = LaunchConfig(
        min_nodes=ns.nn,
        max_nodes=ns.nn,
        nproc_per_node=nproc,
        run_id=RUN_ID,
        rdzv_backend="static",
        rdzv_endpoint=f"{ns.master_address}:{port}",
        rdzv_configs={"rank": ns.nr},
        max_restarts=ns.max_restarts,
        monitor_interval=MONITOR_INTERVAL_S,
        start_method="spawn",
    )
    quiet_torch_failure_logs()
    print(
        f"[launch] {ns.launch}: node {ns.nr}/{ns.nn}, {nproc} process(es) per node, "
        f"master {ns.master_address}:{port}",
        flush=True,
    )
    try:
        elastic_launch(config, sys.executable)("-u", ns.launch, *script_args)
    except ChildFailedError as err:
        lines, code = describe_failures(err, ns.nr)
        if code == INPUT_ERROR_EXIT_CODE:
            return code  # the script printed its one-line error; a rank line would only repeat it
        for line in lines:
            print(f"[launch] {line}", file=sys.stderr, flush=True)
        return code
    return 0


def describe_failures(err, node_rank: int) -> tuple[list[str], int]:
    """One line per failed rank, root cause first, and the exit code the launcher should return.

    Root cause: the earliest failure that was not a SIGTERM (SIGTERM is what the agent sends to
    the surviving ranks). torch's timestamps have 1-s resolution and ranks that die within the
    same monitor interval are listed in local-rank order, so when a survivor crashes on its own
    (e.g. "connection closed by peer") in the same instant, the pick between them is a guess;
    every failed rank is printed either way.
    """
    items = list(err.failures.items())  # insertion order = order the agent saw them exit
    order = sorted(
        range(len(items)),
        key=lambda i: (items[i][1].exitcode == -signal.SIGTERM, items[i][1].timestamp, i),
    )
    lines = []
    for n, i in enumerate(order):
        rank, f = items[i]
        if f.exitcode < 0:
            how = f"was killed by signal {-f.exitcode} ({f.signal_name()})"
        else:
            how = f"exited with code {f.exitcode}"
        line = f"rank {rank} (local {f.local_rank} on node {node_rank}) {how}"
        if n == 0 and len(order) > 1:
            line += " [first failure]"
        message = _error_file_message(f)
        if message:
            line += f": {message}"
        lines.append(line)
    first = items[order[0]][1]
    return lines, _exit_code(first.exitcode) or 1


def _error_file_message(failure) -> str:
    """The exception line a rank recorded (``@record`` error file), or "" when it wrote none."""
    if not (failure.error_file and os.path.isfile(failure.error_file)):
        return ""  # without an error file, torch only has a generic "to enable traceback" hint
    message = failure.message
    if isinstance(message, dict):  # {"message": "Type: text", "extraInfo": {...}}
        message = message.get("message", "")
    text = " ".join(str(message).split())  # one line
    return text if len(text) <= 300 else text[:297] + "..."


# ----------------------------------------------------------------------------------------------
# --slurm: submitit
# ----------------------------------------------------------------------------------------------
class SubmititTask:
    """What each submitit task (one per process) runs.

    The script runs as a subprocess ``python -u SCRIPT args...`` (not runpy in the task's
    interpreter): the same fresh-interpreter semantics as the elastic path (``__main__``,
    ``sys.path[0]``, CUDA state, ``sys.exit``), and a non-zero exit marks the task failed.
    Rank variables come from submitit's JobEnvironment; the master is the job's first host and
    the port is derived from the job id, so every task computes the same one without talking.
    Requeue on preemption (submitit's ``checkpoint``) is not implemented.
    """

    def __init__(self, script: str, script_args: list[str], cwd: str) -> None:
        self.script = script
        self.script_args = list(script_args)
        self.cwd = cwd

    @staticmethod
    def port_from_job_id(job_id: str) -> int:
        digits = re.sub(r"\D", "", job_id) or "0"
        return 20000 + int(digits) % 20000

    def __call__(self) -> int:
        import submitit

        job_env = submitit.JobEnvironment()
        env = worker_env(max(1, job_env.num_tasks // max(1, job_env.num_nodes)))
        env.update(
            RANK=str(job_env.global_rank),
            WORLD_SIZE=str(job_env.num_tasks),
            LOCAL_RANK=str(job_env.local_rank),
            MASTER_ADDR=str(job_env.hostnames[0]),
            MASTER_PORT=str(self.port_from_job_id(str(job_env.job_id))),
        )
        proc = subprocess.run([sys.executable, "-u", self.script, *self.script_args], env=env, cwd=self.cwd)
        if proc.returncode != 0:
            raise RuntimeError(
                f"rank {job_env.global_rank} (local {job_env.local_rank} on node {job_env.node}) "
                f"exited with code {_exit_code(proc.returncode)}"
            )
        return 0


def make_executor(ns: argparse.Namespace):
    """submitit executor for ``ns`` (one task per process, ``--np`` tasks and GPUs per node)."""
    import submitit

    if ns.slurm_cluster == "slurm":
        nproc = ns.np if ns.np is not None else 8  # a slurm node is not this machine: no probing
        gpus = nproc
    else:
        nproc = ns.np if ns.np is not None else default_nproc()
        gpus = min(nproc, default_nproc()) if _has_cuda() else 0
    executor = submitit.AutoExecutor(folder=ns.job_dir, cluster=ns.slurm_cluster)
    executor.update_parameters(
        name=ns.job_name,
        nodes=ns.nn,
        tasks_per_node=nproc,
        gpus_per_node=gpus,
        cpus_per_task=ns.cpus_per_task,
        timeout_min=ns.timeout,
        mem_gb=ns.mem_gb if ns.mem_gb is not None else 40 * max(1, gpus),
        slurm_partition=ns.partition,
        slurm_signal_delay_s=120,
        # empty strings would become invalid sbatch lines; None means "not set" to submitit
        slurm_constraint=ns.constraint or None,
        slurm_comment=ns.comment or None,
        slurm_exclude=ns.exclude or None,
        # one failed task ends the job instead of leaving the others blocked in a collective
        slurm_srun_args=["--kill-on-bad-exit=1"],
    )
    return executor


def run_slurm(ns: argparse.Namespace, script_args: list[str]) -> int:
    if __name__ != "__main__":
        # Imported as a module (e.g. from a test): ship SubmititTask by value so the job does
        # not need this repository on its sys.path to unpickle it.
        import cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[__name__])

    executor = make_executor(ns)
    script = os.path.abspath(ns.launch)
    job = executor.submit(SubmititTask(script, script_args, os.getcwd()))
    print(f"[launch] submitted job {job.job_id} ({ns.slurm_cluster}); logs in {job.paths.folder}", flush=True)
    if ns.slurm_cluster == "slurm" and not ns.wait:
        return 0
    job.wait()
    failures = [_task_failure_line(job.task(i).exception()) for i in range(job.num_tasks)]
    failures = [f"task {i}: {line}" for i, line in enumerate(failures) if line]
    for line in failures:
        print(f"[launch] job {job.job_id} {line}", file=sys.stderr, flush=True)
    if failures:
        print(f"[launch] full logs: {job.paths.folder}", file=sys.stderr, flush=True)
        return 1
    print(f"[launch] job {job.job_id} completed", flush=True)
    return 0


def _task_failure_line(exc: BaseException | None) -> str:
    """One line out of submitit's failure report (which embeds the task's whole traceback)."""
    if exc is None:
        return ""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:  # the RuntimeError raised by SubmititTask names rank and exit code
        if ln.startswith("RuntimeError: rank "):
            return ln[len("RuntimeError: ") :]
    return lines[0] if lines else type(exc).__name__


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# ----------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    ns, script_args = parse_args(sys.argv[1:] if argv is None else argv)
    if ns.slurm:
        return run_slurm(ns, script_args)
    if ns.dist == 0:
        return run_single(ns.launch, script_args)
    return run_elastic(ns, script_args)


if __name__ == "__main__":
    sys.exit(main())
