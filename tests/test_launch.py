"""launch/tpu_pod.sh: the script each host runs (DRY_RUN=1), run here against stand-in git and python3
that record their arguments, so the quoting of every argument is checked end to end."""

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "launch" / "tpu_pod.sh"
ARGS = ["my-tpu", "us-central2-b", "configs/demo.py", "gs://bucket/runs/a b", '--config.demo.regimes=("sharpening",)',
        "--config.seed=3"]
RECORDER = f"""#!{sys.executable}
import json, os, sys
with open(os.environ["CALLS"], "a") as f:
    f.write(json.dumps([os.path.basename(sys.argv[0])] + sys.argv[1:]) + "\\n")
"""


def _remote_script(tmp_path, args=ARGS, **env):
    env = {**os.environ, "DRY_RUN": "1", "REPO_URL": "https://example.invalid/rl_sharpen.git", "REV": "abc123", **env}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)


def _run_on_fake_host(tmp_path, script):
    """Runs a host's script in a home folder with `rl_sharpen` already cloned; returns the recorded calls."""
    home, bin_dir, calls = tmp_path / "home", tmp_path / "bin", tmp_path / "calls.jsonl"
    (home / "rl_sharpen").mkdir(parents=True)
    bin_dir.mkdir()
    for name in ("git", "python3"):
        (bin_dir / name).write_text(RECORDER)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(home), "CALLS": str(calls)}
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, cwd=home, timeout=60)
    assert done.returncode == 0, done.stderr
    return home, calls, done.stdout


def _calls(path, count):
    """The `count` recorded calls; a detached run writes its last one a moment after the script returns."""
    deadline = time.monotonic() + 30
    while not (path.exists() and len(path.read_text().splitlines()) >= count) and time.monotonic() < deadline:
        time.sleep(0.05)
    calls = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    assert len(calls) == count, calls
    return calls


MAIN = ["python3", "-m", "rl_sharpen.main", "--config=configs/demo.py", "--workdir=gs://bucket/runs/a b",
        "--multihost", '--config.demo.regimes=("sharpening",)', "--config.seed=3"]


@pytest.mark.parametrize("env", [{}, {"DETACH": "0"}], ids=["default", "DETACH=0"])
def test_each_host_runs_main_with_the_arguments_as_given(tmp_path, env):
    printed = _remote_script(tmp_path, **env)
    assert printed.returncode == 0, printed.stderr
    assert "nohup" not in printed.stdout
    _, calls, _ = _run_on_fake_host(tmp_path, printed.stdout)
    calls = _calls(calls, 4)
    assert calls[:3] == [["git", "fetch", "-q"], ["git", "checkout", "-q", "abc123"],
                         ["python3", "-m", "pip", "install", "-q", "-e", ".[gcs]", "jax[tpu]"]]
    assert calls[3:] == [MAIN]


def test_detached_run_starts_with_nohup_and_logs_to_the_home_folder(tmp_path):
    printed = _remote_script(tmp_path, DETACH="1", LOG="run_1.log")
    assert printed.returncode == 0, printed.stderr
    assert "nohup " in printed.stdout
    home, calls, stdout = _run_on_fake_host(tmp_path, printed.stdout)
    assert _calls(calls, 4)[3] == MAIN
    assert "started, log ~/run_1.log" in stdout
    assert (home / "run_1.log").exists()


def test_forwarded_variables_reach_every_host_as_they_are(tmp_path):
    token = "hf_a b$c'd\\e"
    printed = _remote_script(tmp_path, FORWARD_ENV="HF_TOKEN XLA_FLAGS", HF_TOKEN=token, XLA_FLAGS="--xla_x=1")
    assert printed.returncode == 0, printed.stderr
    _, calls, stdout = _run_on_fake_host(tmp_path, printed.stdout + '\nprintf "%s|%s" "$HF_TOKEN" "$XLA_FLAGS"')
    assert _calls(calls, 4)[3] == MAIN
    assert stdout == f"{token}|--xla_x=1"


@pytest.mark.parametrize("args, env, message", [
    (ARGS[:3], {}, "usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR"),
    (ARGS, {"DETACH": "1", "LOG": "../x y.log"}, "LOG=../x y.log; it must be a file name of letters"),
    (ARGS, {"DETACH": "1", "LOG": ".."}, "LOG=..; it must be a file name of letters"),
    (ARGS, {"DETACH": "yes"}, "DETACH=yes; allowed: 0 or 1"),
    (ARGS, {"FORWARD_ENV": "HF_TOKEN_NOT_SET_HERE"}, "FORWARD_ENV names 'HF_TOKEN_NOT_SET_HERE', which is not"),
])
def test_bad_requests_exit_2_and_say_why(tmp_path, args, env, message):
    done = _remote_script(tmp_path, args, **env)
    assert done.returncode == 2 and message in done.stderr and not done.stdout


def _git(*args, cwd) -> str:
    """Real git in `cwd`, as a committer named t; its output."""
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_without_rev_the_checkouts_head_must_be_on_a_pushed_branch(tmp_path):
    origin, work = tmp_path / "origin.git", tmp_path / "work"
    _git("init", "-q", "--bare", str(origin), cwd=tmp_path)
    _git("init", "-q", str(work), cwd=tmp_path)
    (work / "a.txt").write_text("1")
    _git("add", "a.txt", cwd=work)
    _git("commit", "-qm", "one", cwd=work)
    _git("remote", "add", "origin", str(origin), cwd=work)
    env = {**os.environ, "DRY_RUN": "1"}
    env.pop("REV", None)

    def launch():
        return subprocess.run(["bash", str(SCRIPT), *ARGS], capture_output=True, text=True, env=env, cwd=work,
                              timeout=60)

    unpushed = launch()
    assert unpushed.returncode == 2 and not unpushed.stdout
    assert "is on no remote branch (as of the last git fetch), so the hosts cannot check it out" in unpushed.stderr
    _git("push", "-q", "origin", "HEAD:refs/heads/main", cwd=work)
    _git("fetch", "-q", "origin", cwd=work)
    head = _git("rev-parse", "HEAD", cwd=work)
    pushed = launch()
    assert pushed.returncode == 0 and f"git checkout -q {head}" in pushed.stdout and not pushed.stderr
    (work / "a.txt").write_text("2")
    dirty = launch()
    assert dirty.returncode == 0 and f"the hosts run {head} without them" in dirty.stderr


def test_a_branch_name_is_the_commit_it_names_at_launch_not_a_hosts_old_branch(tmp_path):
    origin, work, home, bin_dir = (tmp_path / n for n in ("origin.git", "work", "home", "bin"))
    _git("init", "-q", "--bare", str(origin), cwd=tmp_path)
    _git("clone", "-q", str(origin), str(work), cwd=tmp_path)
    (work / "v.txt").write_text("1")
    _git("add", "v.txt", cwd=work)
    _git("commit", "-qm", "one", cwd=work)
    _git("push", "-q", "origin", "HEAD:main", cwd=work)
    home.mkdir()
    _git("clone", "-q", "-b", "main", str(origin), "rl_sharpen", cwd=home)  # a host's clone from an earlier launch
    (work / "v.txt").write_text("2")
    _git("commit", "-qam", "two", cwd=work)
    _git("push", "-q", "origin", "HEAD:main", cwd=work)
    printed = _remote_script(tmp_path, REPO_URL=str(origin), REV="main")
    assert printed.returncode == 0, printed.stderr
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(RECORDER)
    (bin_dir / "python3").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(home), "CALLS": str(tmp_path / "c")}
    done = subprocess.run(["bash", "-c", printed.stdout], capture_output=True, text=True, env=env, cwd=home, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (home / "rl_sharpen" / "v.txt").read_text() == "2"
    assert _git("rev-parse", "HEAD", cwd=home / "rl_sharpen") == _git("rev-parse", "HEAD", cwd=work)
    unknown = _remote_script(tmp_path, REPO_URL=str(origin), REV="no-such-branch")
    assert unknown.returncode == 2 and "REV=no-such-branch is no commit id, nor a branch or tag of" in unknown.stderr

