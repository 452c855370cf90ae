"""What runs on a pod need. Multi-process JAX on one machine: two CPU processes under
`jax.distributed`, two devices each, and a mesh whose data axis spans both. Sampler outputs are
then sharded over devices of both processes; `sharding.host_array` must give every process the
whole array, and a rollout must give both the same batch as one process holding all four devices,
with process 0's verdicts (only process 0 grades).
Then the workdir: gs:// URLs stay URLs, only process 0 writes metrics, and a run resumed from a
checkpoint (after a preemption) replaces the metric rows of the steps it runs again.

The worker is this module run as a script: python -m tests.test_multihost PROCESS_ID PORT OUT_DIR [MODE].
"""

import dataclasses
import importlib.util
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from rl_sharpen import metrics, models, sampling
from rl_sharpen import sharding as shd
from rl_sharpen.checkpoint import Checkpointer
from rl_sharpen.metrics import MetricWriter, read_jsonl, workdir_path
from rl_sharpen.rl import advantages as adv
from rl_sharpen.rl import rewards as rw
from rl_sharpen.rl.rollout import Scorer, rollout

ROOT = Path(__file__).resolve().parents[1]
NUM_PROCESSES, DEVICES_PER_PROCESS = 2, 2
SETUP_FAILED = 3  # worker exit code: this platform cannot run multi-process JAX on CPU


class EvenLastTokenTask:
    """Tokens as text; a completion is correct when its last token is even (a verifier to score)."""

    def prompt_ids(self, problem):
        return list(problem)

    def decode(self, ids):
        return " ".join(str(int(i)) for i in ids)

    def score(self, completions, problems):
        correct = np.array([bool(c) and int(c.split()[-1]) % 2 == 0 for c in completions], np.float32)
        return correct, [c.split()[-1] if c else None for c in completions], {}


class ProcessZeroGradesTask(EvenLastTokenTask):
    """Graded on process 0 only: the other hosts take its verdicts instead of running a grader of their own."""

    def score(self, completions, problems):
        if jax.process_index() != 0:
            raise AssertionError(f"process {jax.process_index()} graded the rollouts")
        return super().score(completions, problems)


PROMPTS = [(3, 2, 4), (0, 4), (5, 6, 2, 3), (4,)]


def sample_and_roll_out(mesh) -> dict[str, np.ndarray]:
    """Sampler tokens and a rollout's batch on a tiny random model whose rows are sharded over `mesh`."""
    cfg = models.ModelConfig("llama", 7, 16, 32, 1, 2, 1, 8, max_position_embeddings=64)
    rng = np.random.default_rng(0)  # numpy weights: the same on every process, nothing to compile
    host = jax.tree.map(lambda s: np.ones(s.shape, np.float32) if s.init == "ones" else
                        np.zeros(s.shape, np.float32) if s.init == "zeros" else
                        rng.standard_normal(s.shape).astype(np.float32), models.param_specs(cfg),
                        is_leaf=lambda x: hasattr(x, "init"))
    params = jax.tree.map(jax.device_put, host, models.param_shardings(cfg, mesh))
    sc = sampling.SamplingConfig(max_new_tokens=6, num_samples=2, eos_ids=(1,), pad_id=0)
    key = jax.random.key(1)
    out = sampling.generate(params, cfg, [list(p) for p in PROMPTS], key, sc, mesh=mesh)
    result = {"tokens": shd.host_array(out.tokens), "lengths": shd.host_array(out.lengths)}
    stop_strings = ("ab", "c")  # over token texts, the stop tables replicated over both processes' devices
    stops = sampling.compile_stops(stop_strings, ["", "", "a", "b", "ab", "ba", "c"], cfg.vocab_size).placed(mesh)
    stopped = sampling.generate(params, cfg, [list(p) for p in PROMPTS], key,
                                dataclasses.replace(sc, stop_strings=stop_strings), mesh=mesh, stops=stops)
    result.update(stop_tokens=shd.host_array(stopped.tokens), stop_lengths=shd.host_array(stopped.lengths))
    batch, stats = rollout(params, params, cfg, ProcessZeroGradesTask(), PROMPTS, key, sc,
                           rw.RewardConfig(alpha=1.0), adv.AdvantageConfig(), Scorer(cfg), mesh)
    result.update({f"batch_{k}": shd.host_array(v) for k, v in vars(batch).items()})
    result.update({f"metric_{k}": np.asarray(v) for k, v in stats.items() if not k.startswith("time")})
    return result


def _workdir_checks(process_id: int, out_dir: str) -> None:
    """A shared workdir passes; one folder per process (a host's local disk), or one process 0 cannot
    write, fails on every process."""
    from rl_sharpen.metrics import check_shared_workdir

    check_shared_workdir(out_dir)
    try:
        check_shared_workdir(os.path.join(out_dir, f"local{process_id}"))
    except ValueError as e:
        Path(out_dir, f"process{process_id}.txt").write_text(str(e))
    blocker = Path(out_dir, "a_file")  # a workdir under a regular file: process 0 cannot write there
    if process_id == 0:
        blocker.write_text("")
    try:
        check_shared_workdir(blocker / "run")
    except ValueError as e:
        Path(out_dir, f"unwritable{process_id}.txt").write_text(str(e))


def _warm_start_check(process_id: int, out_dir: str) -> None:
    """A demo warm start trained with other settings is refused on every process, not only on process 0."""
    import json

    from jax.experimental import multihost_utils

    from rl_sharpen import demo, experiment
    from rl_sharpen.task_setup import build_task
    from tests.experiment_configs import get_config

    exp = experiment.parse(get_config("demo", "tiny"))
    folder = Path(out_dir, "sft_model")
    if process_id == 0:
        folder.mkdir()
        (folder / "warm_start.json").write_text(json.dumps({"sft": {"steps": -1}}))
    multihost_utils.sync_global_devices("warm start written")
    try:
        demo.sft_start(exp, out_dir, build_task(exp.data, exp.model, exp.seed), experiment.build_mesh(exp))
    except Exception as e:  # noqa: BLE001 (the test reads which error each process met)
        Path(out_dir, f"process{process_id}.txt").write_text(f"{type(e).__name__}: {e}")


def _preemption_check(process_id: int, out_dir: str) -> None:
    """Process 0 gets a SIGTERM at step 5: both processes stop at one agreed step, saved, and say so."""
    import signal

    from rl_sharpen.checkpoint import Preempted

    ckpt = Checkpointer(str(Path(out_dir, "checkpoints")), every=1000)
    for step in range(1, 200):
        if step == 5 and process_id == 0:
            os.kill(os.getpid(), signal.SIGTERM)  # what scancel or a TPU preemption sends
        time.sleep(0.05)
        try:
            ckpt.save(step, {"x": np.full(2, step, np.float32)}, {"step": step})
        except Preempted:
            Path(out_dir, f"process{process_id}.txt").write_text(str(step))
            return
    Path(out_dir, f"process{process_id}.txt").write_text("finished")


def _worker(process_id: int, port: int, out_dir: str, mode: str = "rollout") -> None:
    try:
        jax.config.update("jax_num_cpu_devices", DEVICES_PER_PROCESS)
        jax.distributed.initialize(f"localhost:{port}", num_processes=NUM_PROCESSES, process_id=process_id)
        assert jax.process_count() == NUM_PROCESSES and jax.device_count() == NUM_PROCESSES * DEVICES_PER_PROCESS
    except Exception as e:  # reported to the test, which skips
        print(f"multi-process CPU JAX unavailable: {e!r}", file=sys.stderr)
        sys.exit(SETUP_FAILED)
    if mode == "workdir":
        return _workdir_checks(process_id, out_dir)
    if mode == "warm_start":
        return _warm_start_check(process_id, out_dir)
    if mode == "preemption":
        return _preemption_check(process_id, out_dir)
    mesh = shd.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})  # data = 4 over both processes
    assert {d.process_index for d in mesh.devices.flat} == set(range(NUM_PROCESSES))
    np.savez(os.path.join(out_dir, f"process{process_id}.npz"), **sample_and_roll_out(mesh))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _wait_all(procs, timeout: float) -> list[int]:
    """Exit codes; once one process fails the others are killed (they would wait for it forever)."""
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs):
        if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in procs):
            for p in procs:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.2)
    return [p.returncode for p in procs]


def _run_workers(tmp_path, mode: str, meanwhile=lambda: None):
    """Runs the worker processes in `mode` (calling `meanwhile` here as they run); what `meanwhile` returned."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # conftest's 8 fake devices
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    port = _free_port()
    logs = [open(tmp_path / f"process{i}.log", "w+") for i in range(NUM_PROCESSES)]
    procs = [subprocess.Popen([sys.executable, "-m", "tests.test_multihost", str(i), str(port), str(tmp_path), mode],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT) for i, log in enumerate(logs)]
    try:
        result = meanwhile()
    finally:
        codes = _wait_all(procs, timeout=240)
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read()[-3000:])
        log.close()
    if SETUP_FAILED in codes:
        pytest.skip("this platform cannot run two-process CPU JAX: " + outputs[codes.index(SETUP_FAILED)][-500:])
    for i, code in enumerate(codes):
        assert code == 0, f"process {i} exited with {code}:\n{outputs[i]}"
    return result


def test_two_processes_fetch_the_same_global_rollout(tmp_path):
    reference = _run_workers(tmp_path, "rollout", lambda: sample_and_roll_out(
        shd.make_mesh({"data": 4, "fsdp": 1, "tensor": 1}, jax.devices()[:4])))
    assert reference["tokens"].shape == (len(PROMPTS) * 2, 6)
    assert len({tuple(row) for row in reference["tokens"]}) > 1  # the samples are not all alike
    assert np.any(reference["stop_lengths"] < reference["lengths"])  # some samples end at a stop string
    for i in range(NUM_PROCESSES):
        with np.load(tmp_path / f"process{i}.npz") as got:
            assert sorted(got.files) == sorted(reference)
            for name in reference:
                np.testing.assert_allclose(got[name], reference[name], rtol=1e-5, atol=1e-6,
                                           err_msg=f"process {i}: {name}")


def test_a_workdir_that_not_every_process_sees_is_refused_on_every_process(tmp_path):
    _run_workers(tmp_path, "workdir")
    for i in range(NUM_PROCESSES):
        message = (tmp_path / f"process{i}.txt").read_text()
        assert "local" + str(i) in message and "is not shared: process(es) [1] of 2" in message
        assert "process 0 cannot write there" in (tmp_path / f"unwritable{i}.txt").read_text()
    assert not list(tmp_path.glob(".shared_check_*"))  # the probe file is removed


def test_a_demo_warm_start_with_other_settings_is_refused_on_every_process(tmp_path):
    _run_workers(tmp_path, "warm_start")
    for i in range(NUM_PROCESSES):
        message = (tmp_path / f"process{i}.txt").read_text()
        assert message.startswith("CheckpointMismatch: ") and "was trained with other settings (" in message


def test_a_sigterm_stops_every_process_at_one_saved_step(tmp_path):
    _run_workers(tmp_path, "preemption")
    stops = {Path(tmp_path, f"process{i}.txt").read_text() for i in range(NUM_PROCESSES)}
    assert len(stops) == 1 and "finished" not in stops, stops
    assert Checkpointer(str(tmp_path / "checkpoints"), every=1000).latest_step() == int(stops.pop())


def _write_steps(writer: MetricWriter, steps) -> None:
    for step in steps:
        writer.write(step, {"reward": 0.5 * step, "note": "x"})


def test_a_resumed_writer_appends_after_a_last_row_without_its_newline(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"step": 1}\n{"step": 2}')  # written whole, newline not flushed
    writer = MetricWriter(tmp_path, "train", tensorboard=False, is_main=True, resume_step=5)
    writer.write(3, {"reward": 0.5})
    writer.close()
    assert [r["step"] for r in read_jsonl(tmp_path / "train.jsonl")] == [1, 2, 3]


@pytest.mark.parametrize("appendable", [True, False], ids=["local", "object_store"])
def test_resumed_writer_replaces_the_steps_it_runs_again(tmp_path, monkeypatch, appendable):
    """Killed after step 23, restored from the step-20 checkpoint: steps 21-23 appear once, as rerun."""
    monkeypatch.setattr(metrics, "_can_append", lambda path: appendable)  # object stores: rewrite the file

    def writer(resume_step):
        return MetricWriter(tmp_path, "train", tensorboard=False, is_main=True, resume_step=resume_step)

    _write_steps(writer(-1), range(1, 24))
    with open(tmp_path / "train.jsonl", "a") as f:
        f.write('{"step": 24, "rew')  # the kill cut this row off
    resumed = writer(20)
    assert [r["step"] for r in read_jsonl(tmp_path / "train.jsonl")] == list(range(1, 21))
    resumed.write(21, {"reward": -1.0})
    _write_steps(resumed, range(22, 24))
    rows = read_jsonl(tmp_path / "train.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 24))
    assert rows[19] == {"step": 20, "reward": 10.0, "note": "x"} and rows[20] == {"step": 21, "reward": -1.0}
    _write_steps(writer(None), [24])  # None: keep everything and add
    assert [r["step"] for r in read_jsonl(tmp_path / "train.jsonl")] == list(range(1, 25))
    writer(-1)  # a fresh start (no checkpoint to restore) begins an empty file
    assert read_jsonl(tmp_path / "train.jsonl") == []


def test_a_kill_while_a_file_is_rewritten_leaves_the_old_file(tmp_path, monkeypatch):
    """The metric rows a resume rewrites and the JSON results are replaced whole: a kill in the middle
    of writing (here: half the text written, then the process gone) leaves the previous file."""
    _write_steps(MetricWriter(tmp_path, "train", tensorboard=False, is_main=True), range(1, 9))
    metrics.write_json({"step": 8, "accuracy": 0.5}, tmp_path / "result.json")
    before = {name: (tmp_path / name).read_text() for name in ("train.jsonl", "result.json")}
    local = type(workdir_path(tmp_path))
    write_text = local.write_text

    def killed_halfway(self, text, *args, **kwargs):
        write_text(self, text[:len(text) // 2], *args, **kwargs)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(local, "write_text", killed_halfway)
    with pytest.raises(KeyboardInterrupt):
        MetricWriter(tmp_path, "train", tensorboard=False, is_main=True, resume_step=4)
    with pytest.raises(KeyboardInterrupt):
        metrics.write_json({"step": 12, "accuracy": 0.75}, tmp_path / "result.json")
    assert {name: (tmp_path / name).read_text() for name in before} == before
    monkeypatch.undo()
    MetricWriter(tmp_path, "train", tensorboard=False, is_main=True, resume_step=4)
    metrics.write_json({"step": 12, "accuracy": 0.75}, tmp_path / "result.json")
    assert [r["step"] for r in read_jsonl(tmp_path / "train.jsonl")] == [1, 2, 3, 4]
    assert json.loads((tmp_path / "result.json").read_text()) == {"step": 12, "accuracy": 0.75}


def _tensorboard_events(folder: Path) -> list:
    """Every event in the TFRecord files of `folder`: [len u64][crc u32][Event proto][crc u32]."""
    from tensorboardX.proto import event_pb2

    events = []
    for file in sorted(folder.iterdir()):
        data, i = file.read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            events.append(event_pb2.Event.FromString(data[i + 12:i + 12 + n]))
            i += 12 + n + 4
    return events


def _tensorboard_view(folder: Path) -> list[tuple[int, str, float]]:
    """(step, tag, value) of the scalars TensorBoard shows: a SessionLog START at step s drops the
    events read before it at steps >= s (its purge of orphaned data)."""
    from tensorboardX.proto.event_pb2 import SessionLog

    shown = []
    for e in _tensorboard_events(folder):
        if e.HasField("session_log") and e.session_log.status == SessionLog.START:
            shown = [x for x in shown if x[0] < e.step]
        shown += [(e.step, v.tag, v.simple_value) for v in e.summary.value]
    return sorted(shown)


def test_resume_tells_tensorboard_to_hide_the_rerun_steps(tmp_path):
    """A resumed writer purges every earlier event and writes the kept rows again, so TensorBoard
    shows the JSONL's rows once each, the replaced steps' values gone."""
    first = MetricWriter(tmp_path, "train", is_main=True)
    _write_steps(first, range(1, 6))
    first.close()
    w = MetricWriter(tmp_path, "train", is_main=True, resume_step=3)
    w.write(4, {"reward": 40.0})
    w.close()
    rows = [(r["step"], "reward", r["reward"]) for r in read_jsonl(tmp_path / "train.jsonl")]
    assert _tensorboard_view(tmp_path / "tb" / "train") == rows == [(1, "reward", 0.5), (2, "reward", 1.0),
                                                                    (3, "reward", 1.5), (4, "reward", 40.0)]


def test_resume_restores_tensorboard_events_a_kill_lost(tmp_path):
    """The events a killed run had queued but not written (deleted here) come back from the JSONL."""
    killed = MetricWriter(tmp_path, "train", is_main=True)
    _write_steps(killed, range(1, 4))
    killed.close()
    for file in (tmp_path / "tb" / "train").iterdir():
        file.unlink()
    w = MetricWriter(tmp_path, "train", is_main=True, resume_step=3)
    _write_steps(w, range(4, 6))
    w.close()
    assert [step for step, _, _ in _tensorboard_view(tmp_path / "tb" / "train")] == [1, 2, 3, 4, 5]


def test_resumed_writers_keep_two_event_files_at_most_and_show_each_row_once(tmp_path):
    """Resumed three times, within the same second too (a resume in the same process): the event files
    before the newest go (a TensorBoard reading the newest one moves on to the next), every other file
    in the folder stays, and TensorBoard shows the JSONL's rows once each."""
    first = MetricWriter(tmp_path, "train", is_main=True)
    _write_steps(first, range(1, 4))
    first.close()
    events = tmp_path / "tb" / "train"
    (events / "notes.txt").write_text("kept")
    for resume_step, steps in ((3, range(4, 6)), (4, range(5, 7)), (6, range(7, 8))):
        newest = max(events.glob("events.out.tfevents.*"))
        again = MetricWriter(tmp_path, "train", is_main=True, resume_step=resume_step)
        _write_steps(again, steps)
        again.close()
        files = sorted(events.glob("events.out.tfevents.*"))
        assert len(files) == 2 and files[0] == newest
    assert (events / "notes.txt").read_text() == "kept"
    (events / "notes.txt").unlink()
    rows = [(r["step"], "reward", r["reward"]) for r in read_jsonl(tmp_path / "train.jsonl")]
    assert _tensorboard_view(events) == rows and [step for step, _, _ in rows] == list(range(1, 8))


def test_only_the_main_process_writes(tmp_path):
    MetricWriter(tmp_path / "a", "train", is_main=False).write(1, {"reward": 1.0})
    assert not (tmp_path / "a").exists()
    MetricWriter(tmp_path / "b", "train", tensorboard=False).write(1, {"reward": 1.0})  # process 0 of 1
    assert read_jsonl(tmp_path / "b" / "train.jsonl") == [{"step": 1, "reward": 1.0}]


def test_object_store_workdirs_stay_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert os.fspath(workdir_path("gs://bucket/runs/a")) == "gs://bucket/runs/a"
    assert os.fspath(workdir_path("gs://bucket/runs/a") / "train.jsonl") == "gs://bucket/runs/a/train.jsonl"
    assert os.fspath(workdir_path("runs/a")) == os.path.join(os.path.realpath(tmp_path), "runs", "a")
    if importlib.util.find_spec("gcsfs") or importlib.util.find_spec("tensorflow"):
        pytest.skip("a Google Storage client is installed: opening gs://bucket would reach the network")
    for open_workdir in (lambda: Checkpointer("gs://bucket/runs/a/checkpoints", every=1),
                         lambda: MetricWriter("gs://bucket/runs/a", "train")):
        with pytest.raises(ImportError, match="gcsfs"):  # goes to Google Storage, which needs gcsfs here
            open_workdir()
    assert list(tmp_path.iterdir()) == []  # and made no local "gs:/bucket" folder


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], *sys.argv[4:])


def test_tensorboard_tags_spell_at_as_a_word_and_json_keeps_numpy_integers(tmp_path):
    import json

    from rl_sharpen.metrics import write_json

    w = MetricWriter(tmp_path, "eval", is_main=True)
    w.write(1, {"pass@8": 0.5, "maj@8": np.float32(0.25)})
    w.close()
    tags = {v.tag for e in _tensorboard_events(tmp_path / "tb" / "eval") for v in e.summary.value}
    assert tags == {"pass_at_8", "maj_at_8"}
    assert read_jsonl(tmp_path / "eval.jsonl") == [{"step": 1, "pass@8": 0.5, "maj@8": 0.25}]
    write_json({"num_problems": np.int64(8), "pass@k": {1: np.float32(0.5)}}, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == {"num_problems": 8, "pass@k": {"1": 0.5}}


def test_metric_files_are_strict_json_and_read_back_non_finite_values(tmp_path):
    import json
    import math

    from rl_sharpen.metrics import write_json

    def strict(text):  # a reader that, like jq or JavaScript, rejects NaN and Infinity
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name} in a JSON file"))

    w = MetricWriter(tmp_path, "train", is_main=True, tensorboard=False)
    returned = w.write(1, {"loss": np.float32(np.nan), "kl": math.inf, "ratio": -np.inf, "reward": 0.5})
    assert math.isnan(returned["loss"]) and returned["kl"] == math.inf  # the caller's row keeps the floats
    assert strict((tmp_path / "train.jsonl").read_text()) == {"step": 1, "loss": None, "kl": "inf", "ratio": "-inf",
                                                             "reward": 0.5}
    row = read_jsonl(tmp_path / "train.jsonl")[0]
    assert math.isnan(row["loss"]) and row["kl"] == math.inf and row["ratio"] == -math.inf and row["reward"] == 0.5
    write_json({"greedy": np.array([1.0, np.nan]), "cap": math.inf, "n": np.int64(2)}, tmp_path / "r.json")
    assert strict((tmp_path / "r.json").read_text()) == {"greedy": [1.0, None], "cap": "inf", "n": 2}
