"""Training machinery: the packed pool, resuming a stage to the step, and the whole recipe restarting.

The faces are real UTKFace crops from ../shared/data with simple part ellipses as labels: these
tests check that training state survives interruption exactly, not what the model learns.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helenfiles import write_helen

from batch_parse.model.weights import load_weights
from batch_parse.train import augment
from batch_parse.train.datasets import open_dataset
from batch_parse.train.pool import is_pool, open_pool, pack, square_resize

V3 = str(Path(__file__).resolve().parents[1] / "batch_parse" / "model" / "weights" / "stn-icnn-v3.safetensors")


@pytest.fixture(scope="module")
def tiny_pool(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("pool")
    helen = write_helen(tmp / "helen", {"train": 12, "val": 4, "test": 2})
    return pack([helen], tmp / "pool", canvas=96)


def test_pool_holds_the_dataset_as_training_reads_it(tiny_pool, tmp_path):
    info = json.loads((tiny_pool / "pool.json").read_text())
    helen = Path(info["sources"][0])
    for split, n in (("train", 12), ("val", 4), ("test", 2)):
        pool = open_pool(tiny_pool, split)
        assert len(pool) == n == info["splits"][split]["count"]
        ds = open_dataset(helen, split)
        rows = np.array([n - 1, 0])  # any order: rows come back in the order asked
        images, labels = pool.rows(rows)
        for got_image, got_label, i in zip(images, labels, rows):
            name, image, label = ds[int(i)]
            want_image, want_label = square_resize(image, label, 96)
            assert pool.names[i] == name
            assert torch.equal(got_image, want_image) and torch.equal(got_label, want_label)
        assert np.allclose(pool.windows, augment.target_windows(torch.from_numpy(np.asarray(pool.labels)).long()).numpy())
        assert isinstance(pool.images, np.memmap)
    # A packing that never finished is not a pool, and packing again replaces it.
    half = tmp_path / "pool.packing"
    half.mkdir()
    (half / "train_images.npy").write_bytes(b"partial")
    assert not is_pool(half) and not is_pool(tmp_path / "pool")
    with pytest.raises(ValueError, match="not a training pool"):
        open_pool(tmp_path / "pool", "train")


def _train_cmd(pool: Path, run: Path, stage: str, steps: int) -> list[str]:
    return [sys.executable, "-m", "batch_parse.cli", "train", str(pool), str(run), "--stage", stage, "--steps", str(steps),
            "--batch-size", "3", "--val-every", "8", "--val-images", "4", "--threads", "1", "--init", V3,
            "--precision", "fp32", "--checkpoint-minutes", "0"]


@pytest.mark.parametrize("stage", ["a", "c"])
def test_a_killed_stage_resumes_to_the_same_weights(tiny_pool, tmp_path, stage):
    """SIGKILL mid-stage (checkpoints every step), rerun: the same weights, bit for bit, as a run never stopped."""
    steps = 24
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"
    subprocess.run(_train_cmd(tiny_pool, straight, stage, steps), check=True, env=env, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(tiny_pool, killed, stage, steps), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = killed / f"stage_{stage}.ckpt"
    # Every checkpoint replaces the file (a new inode): kill after the third, mid-stage.
    seen: set[int] = set()
    while proc.poll() is None and len(seen) < 3:
        try:
            seen.add(ckpt.stat().st_ino)
        except FileNotFoundError:
            pass
        time.sleep(0.005)
    assert proc.poll() is None, "the stage ended before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed_from = torch.load(ckpt, weights_only=True)["step"]
    assert 3 <= resumed_from < steps
    done = subprocess.run(_train_cmd(tiny_pool, killed, stage, steps), check=True, env=env, capture_output=True, text=True)
    assert f"resumed at step {resumed_from}" in done.stderr
    a = torch.load(straight / f"stage_{stage}.ckpt", weights_only=True)
    b = torch.load(killed / f"stage_{stage}.ckpt", weights_only=True)
    assert a["step"] == b["step"] == steps
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert [p["score"] for p in a["curve"]] == [p["score"] for p in b["curve"]]
    assert torch.equal(a["data"]["order"], b["data"]["order"]) and a["data"]["pos"] == b["data"]["pos"]
    curve = json.loads((killed / f"curve_{stage}.json").read_text())
    assert [p["step"] for p in curve["curve"]] == [0, 8, 16, 24]


def test_the_recipe_restarts_skipping_what_is_done(tiny_pool, tmp_path):
    from batch_parse.train.recipe import RECIPES, run_recipe

    home = tmp_path / "home"
    out = run_recipe(RECIPES["smoke"], home, pool=tiny_pool)
    run = home / "runs" / "smoke"
    for s in RECIPES["smoke"].stages:
        assert json.loads((run / f"stage_{s.phase}.json").read_text())["steps"] == s.steps
    model, info = load_weights(out)
    assert model.cfg.num_classes == 10 and info["stage"] == "e2e"
    assert (run / "curves.png").stat().st_size > 10_000
    with Image.open(run / "curves.png") as png:
        assert png.size[0] > png.size[1]
    before = {p.name: p.stat().st_mtime_ns for p in run.glob("stage_*.ckpt")}
    done = subprocess.run([sys.executable, "-m", "batch_parse.train.recipe", "--recipe", "smoke", "--home", str(home), "--pool", str(tiny_pool)],
                          check=True, capture_output=True, text=True)
    assert done.stderr.count("done (") == len(RECIPES["smoke"].stages) == 6
    assert before == {p.name: p.stat().st_mtime_ns for p in run.glob("stage_*.ckpt")}


def test_stages_trained_side_by_side_give_the_same_weights_as_in_turn(tiny_pool, tmp_path):
    """--jobs 2 trains a and c at once, then b, then e2e, each in its own process: same files as one by one."""
    from batch_parse.train.recipe import RECIPES, run_recipe

    in_turn = run_recipe(RECIPES["smoke"], tmp_path / "in-turn", pool=tiny_pool)
    side_by_side = run_recipe(RECIPES["smoke"], tmp_path / "side-by-side", pool=tiny_pool, jobs=2)
    a, b = load_weights(in_turn)[0].state_dict(), load_weights(side_by_side)[0].state_dict()
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


def test_a_stage_is_trained_by_one_process_at_a_time(tiny_pool, tmp_path):
    import fcntl

    from batch_parse.train.train import TrainOptions, train_stage

    run = tmp_path / "run"
    run.mkdir()
    with open(run / "stage_c.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a running trainer holds it
        with pytest.raises(RuntimeError, match="stage c of .* is being trained by another process"):
            train_stage(TrainOptions(str(tiny_pool), str(run), "c", 2, 4, val_every=2, init=V3))
    assert not (run / "stage_c.ckpt").exists()


def test_a_phase_starts_from_the_phases_it_names(tiny_pool, tmp_path):
    """A stage trained again under a name of its own starts from the best weights of the phase it
    names (a recipe's second stage a, on human points): its step-0 score is that phase's best."""
    from batch_parse.train.train import TrainOptions, train_stage

    run = tmp_path / "run"
    common = dict(val_every=2, val_images=4, init=V3, precision="fp32")
    train_stage(TrainOptions(str(tiny_pool), str(run), "a", 4, 3, lr=3e-3, **common))
    train_stage(TrainOptions(str(tiny_pool), str(run), "a", 2, 3, name="a-again", start=(("stage1", "a"),), **common))
    a = json.loads((run / "curve_a.json").read_text())
    again = json.loads((run / "curve_a-again.json").read_text())
    assert again["phase"] == "a-again" and again["stage"] == "a" and a["phase"] == "a"
    assert again["curve"][0]["score"] == max(p["score"] for p in a["curve"])
    assert (run / "stage_a-again.json").is_file() and (run / "stage_a-again.safetensors").is_file()
    b_path = train_stage(TrainOptions(str(tiny_pool), str(run), "b", 2, 3, name="b-again", start=(("stage1", "a-again"),), **common))
    again_best, _ = load_weights(run / "stage_a-again.safetensors")
    b_model, _ = load_weights(b_path)
    for key, value in again_best.stage1.state_dict().items():
        assert torch.equal(value, b_model.stage1.state_dict()[key]), key  # b trains the localiser only


@pytest.mark.parametrize("name, start, message", [
    ("a/b", None, "phase name 'a/b'"),
    ("x", (("stage1", "missing"),), "starts its stage1 from phase missing, which has no weights"),
    ("x", (("decoder", "a"),), "expected one of stage1, localiser, stage2"),
    ("x", (("stage1", "x"),), "from another phase"),
])
def test_a_phase_with_a_bad_name_or_start_is_refused(tiny_pool, tmp_path, name, start, message):
    from batch_parse.train.train import TrainOptions, train_stage

    with pytest.raises(ValueError, match=message):
        train_stage(TrainOptions(str(tiny_pool), str(tmp_path), "a", 1, 2, name=name, start=start, init=V3))
    assert not list(tmp_path.glob("stage_*.ckpt"))


def test_assemble_writes_the_model_e2e_starts_from(tiny_pool, tmp_path):
    """The networks of three phases' best weights in one fp16 file: e2e's starting model, scorable before e2e."""
    from batch_parse.train.assemble import main as assemble_main
    from batch_parse.train.train import TrainOptions, train_stage

    run = tmp_path / "run"
    for stage in ("a", "c"):
        train_stage(TrainOptions(str(tiny_pool), str(run), stage, 2, 3, val_every=2, val_images=4, init=V3, precision="fp32"))
    out = tmp_path / "assembled.safetensors"
    assert assemble_main([str(run), str(out), "--stage1", "a", "--localiser", "c", "--stage2", "c"]) == 0
    model, info = load_weights(out)
    a, c = load_weights(run / "stage_a.safetensors")[0], load_weights(run / "stage_c.safetensors")[0]
    for network, source in (("stage1", a), ("localiser", c), ("stage2", c)):
        for key, value in getattr(source, network).state_dict().items():
            assert torch.equal(getattr(model, network).state_dict()[key], value.half().float()), (network, key)
    assert info["stage1"] == "a" and info["stage2"] == "c"
    assert assemble_main([str(run), str(tmp_path / "x.safetensors"), "--localiser", "b"]) == 2  # b was never trained
    assert not (tmp_path / "x.safetensors").exists()
