"""Training batches: the stream yields exactly the serial loader's batches in every mode, and
across the overlap trial's switches (so runs and resumes stay exact), keeps the mode that measured
faster, hands sampling errors to the loop, and stops cleanly; bf16 training on a CPU with native
bf16 reaches the fp32 model's Dice."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from vox2vox.config import Config
from vox2vox.data.augmentation import Augmenter, sample_patch
from vox2vox.data.synthetic import write_brats_folder
from vox2vox.device import cpu_bf16
from vox2vox.errors import Vox2VoxError
from vox2vox.rundir import read_metrics
from vox2vox.train.patches import BatchStream, OverlapTrial, batches_per_epoch, patch_loader
from vox2vox.train.runs import train_on_dataset

CONFIG = Config.from_dict({"train": {"patch_size": [32, 32, 32], "batch_size": 2, "seed": 3},
                           "augment": {"p_untouched": 0.0}})


WHOLE_TUMOUR = {"name": "whole-tumour", "values": {"0": "background", "1": "tumour"}, "extra_map": {"2": 1, "4": 1}}


def _cases(n: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [(rng.normal(size=(1, 36, 36, 36)).astype(np.float32), (rng.random((36, 36, 36)) > 0.8).astype(np.int64))
            for _ in range(n)]


def _loader_for(cases, sampler=sample_patch):
    augment = Augmenter(CONFIG.augment)
    return lambda epoch, skip: patch_loader(CONFIG, cases, epoch, sampler, augment, skip_batches=skip)


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True))


def _stream(loader_for, overlap):
    # A trial short enough to switch modes several times inside these 3-batch epochs.
    return BatchStream(loader_for, overlap=overlap, trial=OverlapTrial(warmup=1, block=2, blocks=4))


@pytest.mark.parametrize("overlap", ["on", "off", "auto"])
def test_stream_yields_the_serial_loaders_batches_across_epochs_and_resumes(overlap):
    cases = _cases()
    loader_for = _loader_for(cases)
    serial = {e: list(loader_for(e, 0)) for e in range(5)}
    assert len(serial[0]) == batches_per_epoch(CONFIG, len(cases)) == 3  # 2 + 2 + 1 patches
    assert not _same(serial[0], serial[1])  # epochs differ: the comparison below can fail
    with _stream(loader_for, overlap) as stream:
        for epoch in range(5):
            assert _same(list(stream.epoch(epoch)), serial[epoch])
        if overlap == "auto":  # the trial ran to its end inside these epochs, switching as it went
            assert stream.trial.choice is not None
            assert len(stream.trial.seconds[True]) == len(stream.trial.seconds[False]) == 2
    # A resume in the middle of epoch 1: the rest of that epoch, then epoch 2 from its start.
    with _stream(loader_for, overlap) as stream:
        assert _same(list(stream.epoch(1, skip=1)), serial[1][1:])
        assert _same(list(stream.epoch(2)), serial[2])
    # A loop that leaves an epoch early (budget spent) and goes on with the next.
    with _stream(loader_for, overlap) as stream:
        first = stream.epoch(0)
        assert _same([next(first)], serial[0][:1])
        first.close()
        assert _same(list(stream.epoch(1)), serial[1])


def _drive(trial: OverlapTrial, overlapped_s: float, serial_s: float, steps: int) -> list[bool]:
    now, modes = 0.0, []
    for _ in range(steps):
        overlapped = trial.mode(now)
        modes.append(overlapped)
        now += overlapped_s if overlapped else serial_s
    return modes


@pytest.mark.parametrize(("overlapped_s", "serial_s"), [(0.30, 0.33), (0.33, 0.30)])
def test_the_trial_keeps_the_faster_mode_and_records_its_evidence(overlapped_s, serial_s):
    trial = OverlapTrial(warmup=4, block=6, blocks=4)
    modes = _drive(trial, overlapped_s, serial_s, 60)
    faster = overlapped_s < serial_s
    assert trial.choice is not None and trial.choice.overlapped is faster
    assert trial.choice.overlapped_seconds == pytest.approx(overlapped_s)
    assert trial.choice.serial_seconds == pytest.approx(serial_s)
    assert trial.choice.steps == 10  # 2 blocks of 6, less each block's switch
    assert modes[4:10] == [True] * 6 and modes[10:16] == [False] * 6  # blocks alternate after the warm-up
    assert set(modes[28:]) == {faster}  # decided: no more switching
    assert ("overlapped with the step" if faster else "between steps") in trial.choice.reason


def test_the_trial_does_not_count_what_happens_between_epochs():
    trial = OverlapTrial(warmup=0, block=2, blocks=2)
    now = 0.0
    for step in range(8):
        overlapped = trial.mode(now)
        now += 0.1 if overlapped else 0.2
        if step == 1:  # the epoch ends here: validation takes a minute
            trial.pause()
            now += 60.0
    assert max(trial.seconds[True] + trial.seconds[False]) < 1.0
    assert trial.choice is not None and trial.choice.overlapped


def test_a_stream_that_chose_serial_stops_its_thread():
    stream = BatchStream(_loader_for(_cases()), overlap="auto", trial=OverlapTrial(warmup=0, block=2, blocks=2))
    now = [0.0]

    def clock() -> float:  # a period with the thread running lasts 2, without it 1
        now[0] += 2.0 if stream._thread is not None else 1.0
        return now[0]

    stream.clock = clock
    with stream:
        for epoch in range(4):
            list(stream.epoch(epoch))
        assert stream.trial.choice is not None and not stream.trial.choice.overlapped
        assert stream._thread is None
        assert stream.new_choice() is stream.trial.choice and stream.new_choice() is None  # told once


def test_stream_runs_ahead_into_the_next_epoch_and_stops_when_closed():
    cases = _cases()
    stream = BatchStream(_loader_for(cases))
    batches = stream.epoch(0)
    next(batches)
    assert stream._thread is not None and stream._thread.is_alive()
    stream.close()
    assert stream._thread is None
    assert not any(t.name == "vox2vox-batches" for t in threading.enumerate())


def test_a_sampling_error_reaches_the_training_loop():
    calls = []

    def broken(image, label, size, rng, *, foreground_prob):
        calls.append(1)
        if len(calls) == 2:
            raise Vox2VoxError("case_1: cannot sample")
        return sample_patch(image, label, size, rng, foreground_prob=foreground_prob)

    with BatchStream(_loader_for(_cases(), broken)) as stream, pytest.raises(Vox2VoxError, match="case_1"):
        list(stream.epoch(0))


@pytest.mark.slow
@pytest.mark.skipif(not cpu_bf16(), reason="this CPU has no fast oneDNN bf16 path; plans never pick bf16 here")
def test_bf16_training_on_phantoms_reaches_the_fp32_dice(tmp_path):
    data = tmp_path / "phantoms"
    write_brats_folder(data, n_cases=10, seed=0, shape=(48, 48, 48))
    convention = tmp_path / "whole_tumour.json"
    convention.write_text(json.dumps(WHOLE_TUMOUR))
    scores = {}
    for amp in ("off", "bf16"):
        config = Config.from_dict({
            # Whole tumour against the rest: a task 160 steps learn well, so both precisions converge.
            "data": {"path": str(data), "val_cases": 2, "convention": str(convention)},
            "generator": {"arch": "residual", "in_channels": 4, "n_classes": 2, "base_filters": 8, "max_filters": 64,
                          "depth": 3, "dropout": 0.0},
            "discriminator": {"in_channels": 4, "n_classes": 2, "base_filters": 8, "max_filters": 32, "dropout": 0.0},
            "loss": {"dice": "per_sample", "lambda_dice": 1.0, "lambda_ce": 1.0, "dice_weighting": "uniform",
                     "adversarial_start": 0.3, "lambda_adv": 0.1},
            "optim": {"lr_g": 1e-3, "schedule": "poly"},
            "train": {"patch_size": [48, 48, 48], "batch_size": 2, "epochs": 40, "val_every": 40, "device": "cpu",
                      "amp": amp, "select": "last"},
            "augment": {"p_untouched": 0.5, "p_elastic": 0.0, "p_scale": 0.0},
        })
        run = tmp_path / amp
        train_on_dataset(config, run, progress=False)
        scores[amp] = read_metrics(run / "metrics.jsonl")[-1]["val_dice"]
    assert scores["off"] > 0.8, scores  # both trained to a useful model, so the comparison means something
    print("validation Dice", scores)
    assert abs(scores["bf16"] - scores["off"]) <= 0.01, scores
