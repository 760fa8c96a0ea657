"""launch.py end to end: argv pass-through, 2 processes, 2 "nodes", failure propagation, --dist 0,
submitit (local executor and the sbatch text it would write), and the failure report format.

End-to-end tests start real processes (torch import ~2-3 s each): each has a timeout and the
`slow` marker (pytest.ini); the rest run in about a second.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = ROOT / "launch.py"
FIXTURES = ROOT / "tests" / "fixtures"
TOY = FIXTURES / "ddp_toy_train.py"
FAIL = FIXTURES / "ddp_fail_rank.py"
EXIT_WITH = FIXTURES / "exit_with.py"
TIMEOUT_S = 120  # generous: a hang is what these tests guard against, slowness is not


def _load_launch():
    spec = importlib.util.spec_from_file_location("hirl_launch_under_test", LAUNCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


launch = _load_launch()


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "OMP_NUM_THREADS")}
    env.pop("MASTER_ADDR", None)
    env.pop("MASTER_PORT", None)
    return env


def _launch(*args: str, cwd: Path, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(LAUNCH), *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _records(out: Path) -> dict[int, dict]:
    return {int(p.stem[4:]): json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))}


def _assert_synced(recs: dict[int, dict]) -> None:
    assert sorted(recs) == [0, 1]
    assert all(r["world_size"] == 2 and r["backend"] == "gloo" for r in recs.values())
    # ranks start from different weights and see different data: equal only if DDP synced them
    assert recs[0]["params"] == pytest.approx(recs[1]["params"], abs=1e-6)
    assert recs[0]["checksum"] == pytest.approx(recs[1]["checksum"], abs=1e-5)


# ----------------------------------------------------------------------------------- parsing
def test_parse_args_passes_script_argv_through():
    ns, rest = launch.parse_args(
        [
            "--launch", str(TOY), "OUT", "-c", "cfg.yaml", "--np", "2", "key='a b'", "x=[0.32, 1.0]",
            "--pretrained", "w.pth", "-map", "1", "--por", "5", "-ma", "10.0.0.2", "--", "--port", "7",
        ]
    )  # fmt: skip
    assert ns.np == 2 and ns.master_address == "10.0.0.2" and ns.port is None
    assert rest == [
        "OUT", "-c", "cfg.yaml", "key='a b'", "x=[0.32, 1.0]", "--pretrained", "w.pth", "-map", "1", "--por", "5",
        "--port", "7",
    ]  # fmt: skip


def test_parse_args_aliases_and_defaults():
    ns, rest = launch.parse_args(["--launch", str(TOY), "--nodes", "2", "--ngpus", "4", "--port", "123", "--nr", "1"])
    assert (ns.nn, ns.np, ns.nr, ns.port, ns.master_address, ns.dist, ns.max_restarts) == (
        2, 4, 1, 123, "127.0.0.1", 1, 0,
    )  # fmt: skip
    assert rest == []
    ns, _ = launch.parse_args(["--launch", str(TOY), "--gpus_per_node", "3"])
    assert ns.np == 3 and ns.timeout == 2800 and ns.job_dir == "./output/slurm/%j" and ns.slurm_cluster == "slurm"


@pytest.mark.parametrize(
    "args, match",
    [
        (["--nn", "2", "--nr", "2", "--port", "5"], "node rank must be in"),
        (["--np", "0"], "at least 1 process"),
        (["--dist", "2"], "invalid choice"),
    ],
)
def test_parse_args_rejects(args, match, capsys):
    with pytest.raises(SystemExit) as e:
        launch.parse_args(["--launch", str(TOY), *args])
    assert e.value.code == 2
    assert match in capsys.readouterr().err


def test_several_nodes_without_port_is_a_clear_error(tmp_path):
    r = _launch("--launch", str(TOY), "--nn", "2", "--nr", "0", str(tmp_path / "out"), cwd=tmp_path, timeout=60)
    assert r.returncode != 0
    assert "several nodes need --port (and -ma/--master_address)" in r.stderr
    assert not (tmp_path / "out").exists()


def test_missing_script(tmp_path):
    r = _launch("--launch", str(tmp_path / "nope.py"), cwd=tmp_path, timeout=60)
    assert r.returncode == 2 and "no such file" in r.stderr


# ------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_two_processes_ddp_and_exact_argv(tmp_path):
    script_args = ["out", "key='a b'", "x=[0.32, 1.0]", "-c", "cfg.yaml", "--pretrained", "--", "--np", "9"]
    r = _launch("--launch", str(TOY), "--np", "2", *script_args, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    recs = _records(tmp_path / "out")
    _assert_synced(recs)
    expected_argv = ["out", "key='a b'", "x=[0.32, 1.0]", "-c", "cfg.yaml", "--pretrained", "--np", "9"]
    omp = str(max(1, len(os.sched_getaffinity(0)) // 2))
    for rank, rec in recs.items():
        assert rec["argv"] == expected_argv
        assert rec["env"]["RANK"] == str(rank) and rec["env"]["LOCAL_RANK"] == str(rank)
        assert rec["env"]["WORLD_SIZE"] == "2" and rec["env"]["MASTER_ADDR"] == "127.0.0.1"
        assert rec["env"]["OMP_NUM_THREADS"] == omp
    assert recs[0]["env"]["MASTER_PORT"] == recs[1]["env"]["MASTER_PORT"]


@pytest.mark.slow
def test_two_nodes_on_loopback(tmp_path):
    port = str(_free_port())
    common = ["--launch", str(TOY), "--nn", "2", "--np", "1", "--port", port, "-ma", "127.0.0.1"]
    procs = [
        subprocess.Popen(
            [sys.executable, str(LAUNCH), *common, "--nr", nr, "out", f"node{nr}"],
            cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        for nr in ("1", "0")  # the non-master node first: it must wait for node 0
    ]
    try:
        outs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outs)
    recs = _records(tmp_path / "out")
    _assert_synced(recs)
    # global rank = node rank * processes per node + local rank
    assert recs[0]["argv"] == ["out", "node0"] and recs[1]["argv"] == ["out", "node1"]
    assert all(r["local_rank"] == 0 and r["env"]["MASTER_PORT"] == port for r in recs.values())


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode, code, detail", [("exit", 3, "exited with code 3"), ("raise", 1, "ValueError: rank 1 gives up")]
)
def test_failed_rank_ends_the_job(tmp_path, mode, code, detail):
    start = time.monotonic()
    r = _launch("--launch", str(FAIL), "--np", "2", mode, cwd=tmp_path, timeout=60)
    assert time.monotonic() - start < 60
    assert r.returncode == code, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("[launch] rank 1 (local 1 on node 0)")]
    assert len(lines) == 1 and detail in lines[0], r.stderr
    # rank 0 hangs after the failure (see the fixture) and is stopped by the launcher's SIGTERM
    assert "[launch] rank 0 (local 0 on node 0) was killed by signal 15 (SIGTERM)" in r.stderr
    assert "[first failure]" in lines[0]


@pytest.mark.slow
def test_dist_0_runs_one_plain_process(tmp_path):
    r = _launch("--launch", str(TOY), "--dist", "0", "--np", "4", "out", "a b", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    recs = _records(tmp_path / "out")
    assert sorted(recs) == [0]
    assert recs[0]["world_size"] == 1 and recs[0]["backend"] is None
    assert recs[0]["argv"] == ["out", "a b"] and recs[0]["env"]["RANK"] is None
    r = _launch("--launch", str(EXIT_WITH), "--dist", "0", "5", cwd=tmp_path, timeout=60)
    assert r.returncode == 5


@pytest.mark.slow
def test_slurm_local_executor(tmp_path):
    r = _launch(
        "--launch", str(TOY), "--slurm", "--slurm_cluster", "local", "--np", "1", "--timeout", "5",
        "--job_dir", str(tmp_path / "jobs" / "%j"), "out", "k=a b",
        cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "submitted job" in r.stdout and "completed" in r.stdout
    rec = _records(tmp_path / "out")[0]
    assert rec["argv"] == ["out", "k=a b"]
    assert rec["env"]["RANK"] == "0" and rec["env"]["WORLD_SIZE"] == "1" and rec["env"]["LOCAL_RANK"] == "0"
    job_id = r.stdout.split("submitted job ")[1].split()[0]
    assert rec["env"]["MASTER_PORT"] == str(launch.SubmititTask.port_from_job_id(job_id))
    assert list((tmp_path / "jobs" / job_id).glob("*_log.out"))


# ------------------------------------------------------------------------------------ pieces
def test_sbatch_text_carries_the_slurm_flags(monkeypatch, tmp_path):
    import submitit.slurm.slurm as submitit_slurm

    monkeypatch.setattr(submitit_slurm.SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # no srun here
    ns, _ = launch.parse_args(
        [
            "--launch", str(TOY), "--slurm", "--partition", "gpu", "--nodes", "2", "--ngpus", "4",
            "--timeout", "60", "--constraint", "volta32gb", "--comment", "hi", "--exclude", "n1,n2",
            "--mem_gb", "100", "--job_dir", str(tmp_path / "%j"),
        ]
    )  # fmt: skip
    text = launch.make_executor(ns)._executor._make_submission_file_text("echo", "uid")
    for line in [
        "--partition=gpu", "--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--time=60",
        "--constraint=volta32gb", "--comment=hi", "--exclude=n1,n2", "--mem=100GB", "--kill-on-bad-exit=1",
    ]:  # fmt: skip
        assert line in text, line
    ns, _ = launch.parse_args(["--launch", str(TOY), "--slurm", "--job_dir", str(tmp_path / "%j")])
    text = launch.make_executor(ns)._executor._make_submission_file_text("echo", "uid")
    assert "--constraint" not in text and "--comment" not in text and "--exclude" not in text


def test_port_from_job_id():
    p = launch.SubmititTask.port_from_job_id
    assert p("123") == 20123 and p("45678_3") == 20000 + 456783 % 20000 and p("DEBUG_99") == 20099
    assert all(20000 <= p(str(j)) < 40000 for j in (0, 19999, 20000, 10**12 + 7))


def test_describe_failures_root_cause_and_codes(tmp_path):
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    missing = str(tmp_path / "none.json")
    collateral = ProcessFailure(local_rank=0, pid=10, exitcode=-signal.SIGTERM, error_file=missing)
    culprit = ProcessFailure(local_rank=1, pid=11, exitcode=-signal.SIGKILL, error_file=missing)
    # the agent may record the SIGTERMed survivor first; the culprit is still the SIGKILLed rank
    lines, code = launch.describe_failures(ChildFailedError("x", {4: collateral, 5: culprit}), node_rank=2)
    assert code == 128 + signal.SIGKILL
    assert lines[0] == "rank 5 (local 1 on node 2) was killed by signal 9 (SIGKILL) [first failure]"
    assert lines[1] == "rank 4 (local 0 on node 2) was killed by signal 15 (SIGTERM)"
    lines, code = launch.describe_failures(
        ChildFailedError("x", {3: ProcessFailure(local_rank=0, pid=1, exitcode=7, error_file=missing)}), node_rank=0
    )
    assert (lines, code) == (["rank 3 (local 0 on node 0) exited with code 7"], 7)


# ------------------------------------------------------------------------- one-line errors
@pytest.mark.slow
def test_an_input_error_under_launch_is_the_scripts_one_line(tmp_path):
    """A config typo prints the same single stderr line (and exit code 2) under launch.py as in
    a plain process: no torch elastic log line, no launcher line repeating it."""
    args = ["-c", str(ROOT / "configs/quickstart/clip_vit_tiny_digits.yaml"), "optimzer.lr=1", f"output_dir={tmp_path}"]
    plain = subprocess.run(
        [sys.executable, str(ROOT / "tools/train.py"), *args], cwd=ROOT, env=_env(), capture_output=True, text=True,
        timeout=TIMEOUT_S,
    )
    launched = _launch("--launch", str(ROOT / "tools/train.py"), *args, cwd=ROOT)
    assert plain.returncode == launched.returncode == 2
    assert plain.stderr.splitlines() == launched.stderr.splitlines()
    assert len(launched.stderr.splitlines()) == 1 and launched.stderr.startswith("error: ")


@pytest.mark.slow
def test_a_failed_rank_is_one_launcher_line_without_torch_logs(tmp_path):
    r = _launch("--launch", str(EXIT_WITH), "--np", "1", "3", cwd=tmp_path, timeout=60)
    assert r.returncode == 3
    assert r.stderr.splitlines() == ["[launch] rank 0 (local 0 on node 0) exited with code 3"]


def test_torch_failure_records_are_dropped_others_kept():
    import logging

    launch.quiet_torch_failure_logs()
    launch.quiet_torch_failure_logs()  # idempotent
    logger = logging.getLogger(launch.TORCH_PROCESS_LOGGER)
    assert sum(isinstance(f, launch.DropRepeatedFailureLogs) for f in logger.filters) == 1

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord(launch.TORCH_PROCESS_LOGGER, logging.ERROR, __file__, 1, msg, (), None)

    assert not logger.filter(record("failed (exitcode: %s) local_rank: %s (pid: %s) of binary: %s"))
    assert not logger.filter(record("Sending process %s closing signal %s"))
    assert logger.filter(record("Unable to shutdown process %s via %s, forcefully exiting via %s"))
