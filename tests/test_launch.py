"""Launchers pass the right arguments and environment: fake gcloud/srun/python record what they get."""

import json
import os
import random
import stat
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch")
EXTRA = ["--config.grid.budgets=(1e11, 3e11)", "--config.train.lr=0.001"]
JAX_KEYS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
            "CUDA_VISIBLE_DEVICES", "EHR_JAX_DISTRIBUTED")


def _write_exe(path, body: str) -> str:
    with open(path, "w") as handle:
        handle.write(f"#!{sys.executable}\n" + textwrap.dedent(body))
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    return str(path)


@pytest.fixture
def fakes(tmp_path):
    """A bin dir with a recording python/python3, gcloud, srun and scontrol."""
    bin_dir, records = tmp_path / "bin", tmp_path / "records"
    bin_dir.mkdir()
    records.mkdir()
    recorder = f"""
        import json, os, sys
        record = {{"argv": sys.argv[1:], "cwd": os.getcwd(),
                   "env": {{k: os.environ.get(k) for k in {JAX_KEYS!r}}}}}
        name = os.path.basename(sys.argv[0]) + "-" + os.environ.get("JAX_PROCESS_ID", "0")
        with open(os.path.join({str(records)!r}, name + ".json"), "w") as handle:
            json.dump(record, handle)
        sys.exit(int(os.environ.get("FAKE_EXIT_" + os.environ.get("JAX_PROCESS_ID", "0"), 0)))
    """
    for name in ("python", "python3", "gcloud"):
        _write_exe(bin_dir / name, recorder)
    _write_exe(bin_dir / "scontrol", """
        import sys
        assert sys.argv[1:3] == ["show", "hostnames"], sys.argv
        print("gpu-node-a\\ngpu-node-b")
    """)
    # srun: records its flags, then runs the task command once per task like SLURM would.
    _write_exe(bin_dir / "srun", f"""
        import json, os, subprocess, sys
        argv = sys.argv[1:]
        with open(os.path.join({str(records)!r}, "srun.json"), "w") as handle:
            json.dump(argv, handle)
        command = argv[argv.index("bash"):]
        per_node = int(os.environ["SLURM_NTASKS_PER_NODE"])
        codes = [subprocess.call(command, env=dict(os.environ, SLURM_PROCID=str(i),
                                 SLURM_LOCALID=str(i % per_node), CUDA_VISIBLE_DEVICES="0,1"))
                 for i in range(int(os.environ["SLURM_NTASKS"]))]
        sys.exit(max(codes))
    """)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    for key in JAX_KEYS:
        env.pop(key, None)
    return env, records


def _records(records, prefix):
    found = sorted(p for p in os.listdir(records) if p.startswith(prefix))
    return [json.load(open(os.path.join(records, p))) for p in found]


def _launch(script, args, env, **kwargs):
    return subprocess.run(["bash", os.path.join(LAUNCH, script), *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120, **kwargs)


def test_local_single_process_passes_arguments_through(fakes, tmp_path):
    env, records = fakes
    done = _launch("local.sh", ["configs/quickstart.py", str(tmp_path / "w"), *EXTRA], env)
    assert done.returncode == 0, done.stderr
    (record,) = _records(records, "python-")
    assert record["argv"] == ["-m", "ehr_jax.main", "--config=configs/quickstart.py",
                              f"--workdir={tmp_path / 'w'}", *EXTRA]
    assert record["env"]["JAX_NUM_PROCESSES"] is None  # one process: no jax.distributed


def test_local_processes_get_distinct_ids_and_one_coordinator(fakes, tmp_path):
    env, records = fakes
    env.update(NUM_PROCESSES="3", COORDINATOR_PORT="23456")
    done = _launch("local.sh", ["configs/smoke.py", str(tmp_path / "w"), *EXTRA], env)
    assert done.returncode == 0, done.stderr
    found = _records(records, "python-")
    assert sorted(r["env"]["JAX_PROCESS_ID"] for r in found) == ["0", "1", "2"]
    for r in found:
        assert r["env"]["JAX_COORDINATOR_ADDRESS"] == "localhost:23456"
        assert r["env"]["JAX_NUM_PROCESSES"] == "3"
        assert r["argv"][-2:] == EXTRA


def test_local_stops_the_others_when_one_process_fails(fakes, tmp_path):
    env, _ = fakes
    sleeper = _write_exe(tmp_path / "sleepy", """
        import os, sys, time
        if os.environ["JAX_PROCESS_ID"] == "1":
            sys.exit(3)
        time.sleep(60)
    """)
    env.update(NUM_PROCESSES="2", PYTHON=sleeper)
    done = _launch("local.sh", ["configs/smoke.py", str(tmp_path / "w")], env)
    assert done.returncode == 3


@pytest.mark.slow
def test_local_two_processes_really_form_one_jax_cluster(fakes, tmp_path):
    """The localhost path end to end: the env local.sh sets is what ehr_jax.parallel reads."""
    env, _ = fakes
    probe = _write_exe(tmp_path / "probe", """
        import os
        os.environ["JAX_PLATFORMS"] = "cpu"
        import jax
        from ehr_jax import parallel
        parallel.initialize_distributed()
        print("cluster", jax.process_index(), jax.process_count(), jax.device_count(), flush=True)
        jax.distributed.shutdown()
    """)
    env.update(NUM_PROCESSES="2", PYTHON=probe, COORDINATOR_PORT=str(random.randint(20000, 40000)),
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    workdir = tmp_path / "w"
    done = _launch("local.sh", ["configs/smoke.py", str(workdir)], env)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "cluster 0 2 2" in done.stdout
    assert "cluster 1 2 2" in (workdir / "logs" / "process-1.log").read_text()


def test_tpu_pod_runs_the_same_main_on_every_worker(fakes, tmp_path):
    env, records = fakes
    env.update(TPU_NAME="my-v5p-64", ZONE="us-east5-a", PROJECT="proj",
               REPO_DIR=str(tmp_path), SETUP="true")
    done = _launch("tpu_pod.sh", ["configs/synthetic_large.py", "/mnt/shared/runs/x", *EXTRA], env)
    assert done.returncode == 0, done.stderr
    (gcloud,) = _records(records, "gcloud-")
    argv = gcloud["argv"]
    assert argv[:5] == ["compute", "tpus", "tpu-vm", "ssh", "my-v5p-64"]
    assert "--zone=us-east5-a" in argv and "--project=proj" in argv and "--worker=all" in argv
    (remote,) = [a[len("--command="):] for a in argv if a.startswith("--command=")]
    # Run the remote command here, as a worker would: the quoting must survive the round trip.
    subprocess.run(["bash", "-c", remote], env=env, check=True)
    (worker,) = _records(records, "python3-")
    assert worker["cwd"] == str(tmp_path) and worker["env"]["EHR_JAX_DISTRIBUTED"] == "auto"
    assert worker["argv"] == ["-m", "ehr_jax.main", "--config=configs/synthetic_large.py",
                              "--workdir=/mnt/shared/runs/x", *EXTRA]


def test_tpu_pod_names_the_missing_variable(fakes):
    env, _ = fakes
    done = _launch("tpu_pod.sh", ["configs/quickstart.py", "/tmp/w"], dict(env, ZONE="z"))
    assert done.returncode != 0 and "TPU_NAME" in done.stderr


def test_slurm_starts_one_process_per_gpu_with_jax_distributed_env(fakes, tmp_path):
    env, records = fakes
    env.update(SLURM_JOB_NODELIST="gpu-node-[a-b]", SLURM_NTASKS="4", SLURM_NTASKS_PER_NODE="2",
               SLURM_SUBMIT_DIR=REPO)
    done = _launch("slurm_gpu.sbatch", ["configs/mimic_iv.py", "/shared/runs/m", *EXTRA], env)
    assert done.returncode == 0, done.stderr
    srun_flags = json.load(open(records / "srun.json"))
    assert "--kill-on-bad-exit=1" in srun_flags
    tasks = _records(records, "python-")
    assert [t["env"]["JAX_PROCESS_ID"] for t in tasks] == ["0", "1", "2", "3"]
    assert [t["env"]["CUDA_VISIBLE_DEVICES"] for t in tasks] == ["0", "1", "0", "1"]
    for task in tasks:
        assert task["env"]["JAX_COORDINATOR_ADDRESS"] == "gpu-node-a:12355"
        assert task["env"]["JAX_NUM_PROCESSES"] == "4"
        assert task["argv"] == ["-m", "ehr_jax.main", "--config=configs/mimic_iv.py",
                                "--workdir=/shared/runs/m", *EXTRA]
        assert task["cwd"] == REPO


def test_slurm_outside_slurm_says_so(fakes):
    env, _ = fakes
    done = _launch("slurm_gpu.sbatch", ["configs/mimic_iv.py", "/w"], env)
    assert done.returncode != 0 and "SLURM" in done.stderr
