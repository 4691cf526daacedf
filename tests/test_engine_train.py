"""The training loop, runtime, checkpoints and validation on a tiny fake model and in-memory data."""
import json
import os
import random
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from configs import optim_and_runtime
from datasets.collate import collate_eval, collate_train
from engines import checkpoint as ckpt
from engines.evaluate import evaluate
from engines.fit import fit, resume
from engines.runtime import TorchRuntime
from engines.tasks import ClassificationTask, RegressionTask
from engines import train as train_module
from engines.train import NonFiniteLossError, _check_step, train_one_epoch
from datasets.video_dataset import BadInputError, BadInputTracker
from datasets.mixup import VideoMixup
from utils.distributed import DistInfo
from utils.errors import BadFileError, UsageError
from utils.seeding import AUGMENT, EpochSampler, sample_key, seeded_rngs

CPU = torch.device("cpu")
INFO = DistInfo(0, 1, 0, CPU)


class ToyVideos(Dataset):
    """Clips (3, 2, 4, 4) whose class (0..2) is the channel with the largest mean: training items, or with
    ``with_valid`` evaluation views whose ``valid`` is False every 5th item."""

    def __init__(self, n: int = 24, seed: int = 0, with_valid: bool = False) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % 3
        self.videos = torch.randn(n, 3, 2, 4, 4, generator=g)
        self.videos[torch.arange(n), self.labels] += 1.5
        self.with_valid = with_valid

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        if self.with_valid:
            return {"video": self.videos[i], "label": self.labels[i], "video_id": i, "window": 0, "segment": 0,
                    "crop": 0, "valid": i % 5 != 4}
        return {"video": self.videos[i], "label": self.labels[i], "index": i}

    def collate(self, items):
        return collate_eval(items) if self.with_valid else collate_train(items, 1)


class ToyNet(nn.Module):
    def __init__(self, out: int = 3) -> None:
        super().__init__()
        self.head = nn.Linear(3, out)

    def forward(self, x):
        return self.head(x.mean(dim=(2, 3, 4)))


def _runtime(model, lr=0.5, opt="sgd", out=None, loss_scaling=False):
    params = [{"params": list(model.parameters()), "weight_decay": 0.0, "lr_scale": 1.0}]
    optimizer = torch.optim.SGD(params, lr=lr) if opt == "sgd" else torch.optim.AdamW(params, lr=lr)
    return TorchRuntime(model, optimizer, CPU, None, clip_grad=None, distributed=False, output_dir=out,
                        loss_scaling=loss_scaling)


def _args(tmp_path, **kw):
    """(OptimConfig, RuntimeConfig) of these flags."""
    base = dict(epochs=3, update_freq=1, print_freq=100, output_dir=str(tmp_path), save_ckpt=True, save_ckpt_freq=1,
                lr=0.3, min_lr=0.01, warmup_epochs=0, warmup_steps=-1, warmup_lr=0.0, weight_decay=0.0,
                weight_decay_end=None, resume="", auto_resume=True, start_epoch=0, seed=0, batch_size=4,
                save_ckpt_steps=0, save_ckpt_minutes=0.0)
    base.update(kw)
    return optim_and_runtime(**base)


def test_training_lowers_the_loss():
    torch.manual_seed(0)
    data = ToyVideos()
    loader = DataLoader(data, batch_size=4, shuffle=True, collate_fn=data.collate)
    runtime = _runtime(ToyNet(), lr=0.5)
    task = ClassificationTask(3)
    lr = np.full(100, 0.5)
    wd = np.zeros(100)
    first = train_one_epoch(runtime, task, loader, 0, lr, wd, 0, len(loader))
    for epoch in range(1, 6):
        last = train_one_epoch(runtime, task, loader, epoch, lr, wd, epoch * len(loader), len(loader))
    assert last["loss"] < 0.7 * first["loss"]
    assert last["lr"] == pytest.approx(0.5)


def test_gradient_accumulation_matches_a_big_batch():
    data = ToyVideos(n=8)
    task = ClassificationTask(3)
    lr, wd = np.full(10, 0.1), np.zeros(10)
    torch.manual_seed(0)
    net_a = ToyNet()
    net_b = ToyNet()
    net_b.load_state_dict(net_a.state_dict())
    run_a, run_b = _runtime(net_a), _runtime(net_b)
    train_one_epoch(run_a, task, DataLoader(data, batch_size=4, collate_fn=data.collate), 0, lr, wd, 0, 2,
                    update_freq=1)
    train_one_epoch(run_b, task, DataLoader(data, batch_size=2, collate_fn=data.collate), 0, lr, wd, 0, 2,
                    update_freq=2)
    for pa, pb in zip(net_a.parameters(), net_b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


class NaNAfter:
    """Wraps a task: the loss becomes NaN from the ``n``-th call on."""

    def __init__(self, task, n: int) -> None:
        self.task, self.n, self.calls = task, n, 0
        self.best_key, self.higher_is_better = task.best_key, task.higher_is_better

    def training_loss(self, *a):
        self.calls += 1
        loss, extra = self.task.training_loss(*a)
        return (loss * float("nan") if self.calls >= self.n else loss), extra


@pytest.mark.parametrize("loss_scaling", [False, True])
def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tmp_path, loss_scaling):
    """A non-finite loss stops the run (the official loops exit), with or without the grad scaler."""
    torch.manual_seed(0)
    data = ToyVideos(n=12)
    loader = DataLoader(data, batch_size=4, collate_fn=data.collate)
    runtime = _runtime(ToyNet(), out=tmp_path, loss_scaling=loss_scaling)
    task = NaNAfter(ClassificationTask(3), n=5)  # epoch 0 = calls 1..3, NaN in epoch 1
    with pytest.raises(NonFiniteLossError, match="loss is nan at epoch 1, step 4"):
        fit(*_args(tmp_path), runtime, task, loader, len(loader), INFO)
    saved = ckpt.read(tmp_path / "checkpoint-latest.pth")
    assert saved["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in saved["model"].values())
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-0.pth", "checkpoint-latest.pth"]
    assert not list(tmp_path.glob(".*tmp"))
    assert [json.loads(line)["epoch"] for line in (tmp_path / "log.txt").read_text().splitlines()] == [0]


def test_grad_scaler_skips_a_step_with_non_finite_gradients_and_training_goes_on():
    """A finite loss whose gradients are not finite: the scaler skips that step (weights and AdamW state unchanged),
    halves the scale and the next steps train again (the official NativeScalerWithGradNormCount)."""
    torch.manual_seed(0)
    data = ToyVideos(n=16)
    loader = DataLoader(data, batch_size=4, collate_fn=data.collate)
    net = ToyNet()
    runtime = _runtime(net, lr=0.1, opt="adamw", loss_scaling=True)
    backward_passes = []

    def inf_on_second_pass(grad):
        backward_passes.append(1)
        return torch.full_like(grad, float("inf")) if len(backward_passes) == 2 else grad

    net.head.weight.register_hook(inf_on_second_pass)
    snapshots = [({k: v.clone() for k, v in net.state_dict().items()}, runtime.loss_scale, 0)]

    def after_step(done, progress):
        step = runtime.optimizer.state[net.head.weight]["step"]
        snapshots.append(({k: v.clone() for k, v in net.state_dict().items()}, runtime.loss_scale, int(step)))

    stats = train_one_epoch(runtime, ClassificationTask(3), loader, 0, np.full(8, 0.1), np.zeros(8), 0, 4,
                            after_step=after_step)
    changed = [any(not torch.equal(a[k], b[k]) for k in a) for (a, *_), (b, *_) in zip(snapshots, snapshots[1:])]
    assert changed == [True, False, True]  # step 2 (inf gradient) skipped, steps 1 and 3 applied
    assert [scale for _, scale, _ in snapshots] == [65536.0, 65536.0, 32768.0, 32768.0]
    assert [step for *_, step in snapshots[1:]] == [1, 1, 2]  # AdamW did not count the skipped step
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert stats["loss_scale"] == pytest.approx((65536 + 3 * 32768) / 4) and stats["grad_norm"] == float("inf")


class RecordingWriter:
    """Records ``add_scalar`` calls as {tag: [(step, value), ...]} (a stand-in for tensorboardX's SummaryWriter)."""

    def __init__(self) -> None:
        self.scalars: dict = {}

    def add_scalar(self, tag, value, step):
        self.scalars.setdefault(tag, []).append((step, float(value)))

    def flush(self):
        pass


def test_tensorboard_scalars_have_the_official_names_and_steps(tmp_path):
    """The official loops log every micro-batch at its global index (``set_step()`` after each, ``set_step(epoch ×
    steps × update_freq)`` at each epoch's start), ``grad_norm`` only when it steps, and per epoch the validation's
    ``perf/val_*`` at step = epoch."""
    data = ToyVideos(n=16)
    loader = DataLoader(data, batch_size=2, collate_fn=data.collate)  # 8 micro-batches: 4 steps of 2
    net = ToyNet()
    runtime = _runtime(net, lr=0.1, opt="adamw", out=tmp_path, loss_scaling=True)
    runtime.optimizer.param_groups[0]["weight_decay"] = 0.05  # a decayed group: opt/weight_decay is logged
    writer = RecordingWriter()
    optim, run = _args(tmp_path, epochs=2, update_freq=2, weight_decay=0.05, lr=0.1, min_lr=0.1)
    val = {"loss": 1.5, "acc1": 40.0, "acc5": 90.0, "missing": 0.0}
    fit(optim, run, runtime, ClassificationTask(3), loader, 4, INFO, validate=lambda: val, log_writer=writer)
    per_micro_batch = {"loss/loss", "loss/class_acc", "opt/loss_scale", "opt/lr", "opt/min_lr", "opt/weight_decay"}
    assert set(writer.scalars) == per_micro_batch | {"opt/grad_norm", "perf/val_loss", "perf/val_acc1",
                                                     "perf/val_acc5"}
    for tag in per_micro_batch:
        assert [step for step, _ in writer.scalars[tag]] == list(range(16)), tag
    assert [step for step, _ in writer.scalars["opt/grad_norm"]] == list(range(1, 16, 2))
    assert writer.scalars["perf/val_acc1"] == [(0, 40.0), (1, 40.0)] and writer.scalars["perf/val_loss"][1] == (1, 1.5)
    assert {v for _, v in writer.scalars["opt/loss_scale"]} == {65536.0}
    assert [v for _, v in writer.scalars["opt/lr"]] == pytest.approx([0.1] * 16)


def test_resume_continues_exactly(tmp_path):
    data = ToyVideos(n=12)

    def make(out):
        torch.manual_seed(0)
        net = ToyNet()
        loader = DataLoader(data, batch_size=4, shuffle=True, collate_fn=data.collate)
        return net, loader, _runtime(net, lr=0.3, opt="adamw", out=out)

    net_a, loader_a, run_a = make(tmp_path / "a")
    torch.manual_seed(1)
    fit(*_args(tmp_path / "a"), run_a, ClassificationTask(3), loader_a, 3, INFO)
    # A second run is "killed" after epoch 1: only checkpoint-1 survives; --auto_resume continues from it.
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "checkpoint-1.pth").write_bytes((tmp_path / "a" / "checkpoint-1.pth").read_bytes())
    net_b, loader_b, run_b = make(tmp_path / "b")
    torch.manual_seed(123)  # whatever the fresh process's RNG is, the checkpoint's RNG state takes over
    optim_b, args_b = _args(tmp_path / "b")
    state = resume(args_b, run_b, None)
    assert state.start_epoch == 2
    fit(optim_b, args_b, run_b, ClassificationTask(3), loader_b, 3, INFO, state=state)
    for pa, pb in zip(net_a.parameters(), net_b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    opt_a, opt_b = run_a.optimizer.state_dict(), run_b.optimizer.state_dict()
    assert opt_a["state"][0]["step"] == opt_b["state"][0]["step"]


class Keyed(Dataset):
    """ToyVideos read through ``EpochSampler`` keys, with random noise drawn in the item (the dataset's seeding)."""

    def __init__(self, data: ToyVideos) -> None:
        self.data = data
        self.collate = data.collate

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key):
        epoch, index = sample_key(key)
        item = dict(self.data[index])
        with seeded_rngs(0, AUGMENT, epoch, index, 0):
            item["video"] = item["video"] + 0.1 * torch.randn(item["video"].shape)
        return item


class DropNet(ToyNet):
    def forward(self, x):
        return self.head(nn.functional.dropout(x.mean(dim=(2, 3, 4)), 0.3, self.training))


class CrashAt:
    """Wraps a task: raises at the ``n``-th training call (a crash mid-epoch)."""

    def __init__(self, task, n: int) -> None:
        self.task, self.n, self.calls = task, n, 0
        self.best_key, self.higher_is_better = task.best_key, task.higher_is_better

    def training_loss(self, *a):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt("crash")
        return self.task.training_loss(*a)


def test_mid_epoch_checkpoint_resumes_at_the_next_step_exactly(tmp_path):
    data = Keyed(ToyVideos(n=16))
    task = ClassificationTask(3, mixup=VideoMixup(mixup_alpha=0.8, cutmix_alpha=1.0, num_classes=3))

    def make(out):
        torch.manual_seed(0)
        net = DropNet()
        loader = DataLoader(data, batch_size=2, sampler=EpochSampler(data, num_replicas=1, rank=0, seed=0),
                            collate_fn=data.collate)
        return net, loader, _runtime(net, lr=0.3, opt="adamw", out=out), _args(out, epochs=2, save_ckpt_steps=3)

    net_a, loader_a, run_a, (optim, args_a) = make(tmp_path / "a")
    fit(optim, args_a, run_a, task, loader_a, 8, INFO)
    net_b, loader_b, run_b, (optim, args_b) = make(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):  # crashes in the 7th step of epoch 1 (the 15th training call)
        fit(optim, args_b, run_b, CrashAt(task, 15), loader_b, 8, INFO)
    saved = ckpt.read(tmp_path / "b" / "checkpoint-latest.pth")
    assert (saved["epoch"], saved["epoch_step"], saved["step"]) == (0, 4, 12)  # global steps 3, 6, 9, 12 saved
    assert len(saved["train_sums"]) == 1 and saved["train_sums"][0]["loss"][1] == 4 * 2
    net_c, loader_c, run_c, _ = make(tmp_path / "b")
    torch.manual_seed(99)
    state = resume(args_b, run_c, None)
    assert (state.start_epoch, state.start_step) == (1, 4)
    fit(optim, args_b, run_c, task, loader_c, 8, INFO, state=state)
    for pa, pc in zip(net_a.parameters(), net_c.parameters()):
        assert torch.equal(pa, pc)
    assert (tmp_path / "a" / "log.txt").read_text() == (tmp_path / "b" / "log.txt").read_text()
    # another number of samples per step: the epoch starts over (no exact resume)
    assert resume(replace(args_b, batch_size=1), run_c, None).start_step == 0


def test_save_clock_steps_and_minutes():
    assert [ckpt.SaveClock(3, 0, CPU).due(s) for s in (1, 3, 6, 7)] == [False, True, True, False]
    assert not ckpt.SaveClock(0, 0, CPU).due(5)
    assert not ckpt.SaveClock(0, 60, CPU).due(5) and ckpt.SaveClock(0, 1e-9, CPU).due(5)
    with pytest.raises(UsageError, match="--save_ckpt_steps -1"):
        ckpt.SaveClock(-1, 0, CPU)


def test_interrupted_saves_are_cleaned_up_or_finished(tmp_path):
    """What a kill leaves at each point of a save, and what the next run makes of it."""
    def deepspeed_folder(path, content):
        path.mkdir()
        (path / ckpt.DEEPSPEED_MODEL_STATES).write_text(content)
        return path

    (tmp_path / ".checkpoint-latest.pth.x1.tmp").write_bytes(b"half")  # a plain write
    deepspeed_folder(tmp_path / "checkpoint-best", "old best")
    deepspeed_folder(ckpt.staging_folder(tmp_path, "checkpoint-best"), "half")  # killed while DeepSpeed wrote
    ckpt.install_folder(deepspeed_folder(tmp_path / "staged", "new"), tmp_path / "checkpoint-latest")
    old_latest = tmp_path / ".checkpoint-latest.old"  # killed between the two renames of replacing it again
    (tmp_path / "checkpoint-latest").rename(old_latest)
    staged = deepspeed_folder(ckpt.staging_folder(tmp_path, "checkpoint-latest"), "newer")
    (staged / "complete").write_text("ok\n")
    ckpt.recover_partial_saves(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-best", "checkpoint-latest"]
    assert (tmp_path / "checkpoint-best" / ckpt.DEEPSPEED_MODEL_STATES).read_text() == "old best"
    assert (tmp_path / "checkpoint-latest" / ckpt.DEEPSPEED_MODEL_STATES).read_text() == "newer"
    assert ckpt.is_complete(tmp_path / "checkpoint-latest")


def test_resume_finds_the_checkpoint_a_killed_save_left_staged(tmp_path):
    """Killed between the renames: the only copy of the newest checkpoint is the staged folder; resume uses it."""
    ckpt.save_atomic({"epoch": 0}, tmp_path / "checkpoint-0.pth")
    staged = ckpt.staging_folder(tmp_path, "checkpoint-latest")
    staged.mkdir()
    torch.save({"module": {}, "epoch": 8}, staged / ckpt.DEEPSPEED_MODEL_STATES)
    (staged / "complete").write_text("ok\n")
    assert ckpt.find_latest(tmp_path) == tmp_path / "checkpoint-0.pth"
    assert ckpt.recover_and_find_latest(tmp_path) == tmp_path / "checkpoint-latest"
    assert ckpt.peek(tmp_path / "checkpoint-latest")["epoch"] == 8


def test_the_newest_checkpoint_is_the_furthest_in_training_whatever_the_file_times(tmp_path):
    """Copying or touching an output folder changes file times; the choice follows the epoch (and the step inside
    the next epoch) each checkpoint holds: from the name for checkpoint-{N}, stored in it for checkpoint-latest."""
    def write(name, age, **state):
        ckpt.save_atomic(state, tmp_path / name)
        os.utime(tmp_path / name, ns=(10**18 + age * 10**9,) * 2)  # larger age: a later file time

    write("checkpoint-latest.pth", 0, epoch=3, epoch_step=2)  # 2 steps into epoch 4
    write("checkpoint-3.pth", 5, epoch=3)
    write("checkpoint-1.pth", 9, epoch=1)  # touched last
    write("checkpoint-best.pth", 10, epoch=7)
    write("checkpoint-best_val.pth", 10, epoch=7)
    assert ckpt.find_latest(tmp_path) == tmp_path / "checkpoint-latest.pth"
    write("checkpoint-4.pth", 0, epoch=4)  # killed after checkpoint-4, before checkpoint-latest, at the end of epoch 4
    assert ckpt.find_latest(tmp_path) == tmp_path / "checkpoint-4.pth"
    write("checkpoint-latest.pth", 0, epoch=4)  # the same position: checkpoint-latest
    assert ckpt.find_latest(tmp_path) == tmp_path / "checkpoint-latest.pth"
    write("checkpoint-latest.pth", 20, model={})  # weights only: no position, the oldest
    assert ckpt.find_latest(tmp_path) == tmp_path / "checkpoint-4.pth"
    assert ckpt.position(tmp_path / "checkpoint-latest.pth") == (-1, 0)

    deepspeed = tmp_path / "deepspeed"
    for tag, age, epoch in (("checkpoint-latest", 0, 6), ("checkpoint-5", 9, 5)):
        folder = deepspeed / tag
        folder.mkdir(parents=True)
        torch.save({"module": {}, "epoch": epoch, "epoch_step": 0}, folder / ckpt.DEEPSPEED_MODEL_STATES)
        (folder / "complete").write_text("ok\n")
        os.utime(folder / "complete", ns=(10**18 + age * 10**9,) * 2)
    assert ckpt.find_latest(deepspeed) == deepspeed / "checkpoint-latest"


def test_checkpoint_files_atomic_latest_and_rng(tmp_path):
    ckpt.save_atomic({"epoch": 0}, tmp_path / "checkpoint-0.pth")
    ckpt.save_atomic({"epoch": 1}, tmp_path / "checkpoint-latest.pth")
    ckpt.save_atomic({"epoch": 0}, tmp_path / "checkpoint-best.pth")
    (tmp_path / ".checkpoint-2.pth.abc.tmp").write_bytes(b"partial")
    staging = ckpt.staging_folder(tmp_path, "checkpoint-3")  # our DeepSpeed save while DeepSpeed writes
    staging.mkdir()
    (staging / ckpt.DEEPSPEED_MODEL_STATES).write_bytes(b"partial")
    assert ckpt.find_latest(tmp_path) == tmp_path / "checkpoint-latest.pth"
    assert ckpt.find_latest(tmp_path / "nothing") is None
    ckpt.install_folder(staging, tmp_path / "checkpoint-3")
    assert ckpt.find_latest(tmp_path) == tmp_path / "checkpoint-3" and not staging.exists()
    state = ckpt.rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1))
    ckpt.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(BadFileError, match="bad.pth"):
        ckpt.read(tmp_path / "bad.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        ckpt.read(tmp_path / "missing.pth")


def test_validation_excludes_undecodable_items():
    data = ToyVideos(n=10, with_valid=True)
    net = ToyNet()
    runtime = _runtime(net)
    stats = evaluate(runtime, ClassificationTask(3), DataLoader(data, batch_size=3, collate_fn=data.collate))
    keep = [i for i in range(10) if i % 5 != 4]
    with torch.no_grad():
        logits = net(data.videos[keep])
    acc1 = 100.0 * (logits.argmax(1) == data.labels[keep]).float().mean().item()
    assert stats["missing"] == 2 and stats["num_samples"] == 8
    assert stats["acc1"] == pytest.approx(acc1)
    assert stats["acc5"] == pytest.approx(acc1)  # fewer than 5 classes: top-1, as the official validation


def test_top5_counts_labels_among_the_five_highest_scores():
    """With 5 classes or more, acc5 is top-5 (count × 100): a label ranked 1st, 5th and 6th of six classes."""
    outputs = torch.tensor([[6.0, 5.0, 4.0, 3.0, 2.0, 1.0]]).repeat(3, 1)
    stats = ClassificationTask(6).batch_stats(outputs, torch.tensor([0, 4, 5]))
    assert (stats["acc1"], stats["acc5"], stats["n"]) == (100.0, 200.0, 3.0)
    assert stats["loss"] == pytest.approx(float(nn.functional.cross_entropy(outputs, torch.tensor([0, 4, 5]),
                                                                            reduction="sum")))


def test_label_smoothing_without_mixup():
    """--smoothing without mixup: (1 − ε)·(−log p of the label) + ε·mean over classes of −log p."""
    torch.manual_seed(0)
    net, data = ToyNet(), ToyVideos(n=4)
    batch = data.collate([data[i] for i in range(4)])
    loss, _ = ClassificationTask(3, smoothing=0.1).training_loss(net, batch, CPU)
    logp = net(batch.video).log_softmax(-1)
    torch.testing.assert_close(loss, (-0.9 * logp.gather(1, batch.label[:, None])[:, 0] - 0.1 * logp.mean(-1)).mean())


def test_regression_task_loss_and_metric():
    net = ToyNet(out=1)
    runtime = _runtime(net)
    data = [{"video": torch.randn(3, 2, 4, 4), "label": torch.tensor(float(i)), "video_id": i, "window": 0,
             "segment": 0, "crop": 0, "valid": True} for i in range(6)]
    stats = evaluate(runtime, RegressionTask(), DataLoader(data, batch_size=4, collate_fn=collate_eval))
    with torch.no_grad():
        pred = net(torch.stack([d["video"] for d in data])).squeeze(1)
    assert stats["mse"] == pytest.approx(((pred - torch.arange(6.0)) ** 2).mean().item(), rel=1e-5)
    with pytest.raises(ValueError, match="nb_classes 1"):
        RegressionTask().predict(ToyNet(out=3), collate_eval(data[:1]), CPU)


class _TwoRanks:
    """The collectives ``engines.train`` calls, between two threads standing for ranks 0 and 1."""

    def __init__(self) -> None:
        self.barrier = threading.Barrier(2, timeout=30)
        self.slots: list = [None, None]
        self.local = threading.local()

    def _exchange(self, value):
        self.slots[self.local.rank] = value
        self.barrier.wait()
        out = list(self.slots)
        self.barrier.wait()
        return out

    def all_reduce_sum(self, values, device):
        return [sum(column) for column in zip(*self._exchange(values))]

    def all_gather_objects(self, obj):
        return self._exchange(obj)


def test_bad_files_are_counted_over_every_rank(monkeypatch):
    """--max_bad_fraction over the run and the ranks: step 0 finds a bad file on rank 0 only (1 of 4 allowed),
    step 1 another on rank 1 only; each rank counts both and the two stop together with the same error."""
    ranks = _TwoRanks()
    monkeypatch.setattr(train_module, "get_world_size", lambda: 2)
    monkeypatch.setattr(train_module, "all_reduce_sum", ranks.all_reduce_sum)
    monkeypatch.setattr(train_module, "all_gather_objects", ranks.all_gather_objects)
    seen: dict[int, list] = {}

    def rank(number: int) -> None:
        ranks.local.rank = number
        tracker, seen[number] = BadInputTracker(num_files=4, max_bad_fraction=0.25), []
        steps = ({"/v/a.mp4": "zero-byte file"} if number == 0 else {}, {"/v/b.mp4": "truncated"} if number else {})
        try:
            for step, bad in enumerate(steps):
                _check_step(1.0, bad, tracker, 0, step, torch.device("cpu"))
                seen[number].append(sorted(tracker.bad))
        except BadInputError as err:
            seen[number].append(str(err))

    threads = [threading.Thread(target=rank, args=(number,)) for number in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for number in range(2):
        assert seen[number][0] == ["/v/a.mp4"]  # after step 0: rank 1 counts rank 0's file too
        assert seen[number][1].startswith("2 of 4 files are unreadable, more than --max_bad_fraction 0.25 allows")
        assert seen[number][1].endswith("  /v/a.mp4 (zero-byte file)\n  /v/b.mp4 (truncated)")
