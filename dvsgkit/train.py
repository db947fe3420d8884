"""Training with SpikingJelly's `classify_dvsg` recipe: config -> data -> model -> optimizer ->
loop -> checkpoint. The run directory's files are dvsgkit.run's, the torchrun job's stages
dvsgkit.distributed's."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dvsgkit.config import TrainConfig
from dvsgkit.data import make_loader
from dvsgkit.device import set_cpu_threads, training_device
from dvsgkit.distributed import Job
from dvsgkit.errors import InputError
from dvsgkit.frames import FrameSpec
from dvsgkit.framestore.build import build_frame_store
from dvsgkit.framestore.layout import frame_store_path
from dvsgkit.framestore.read import open_frame_store
from dvsgkit.model import GestureNet
from dvsgkit.objective import FiniteWatch, TrainingDiverged, run_epoch
from dvsgkit.run import (
    LATEST,
    Run,
    check_resume_frames,
    checkpoint_file,
    prepare_run,
    recorded_root,
)
from dvsgkit.run.checkpoint import (
    checkpoint_bytes,
    load_resumable,
    new_checkpoint,
    restore,
    rng_state,
    seed_everything,
)


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    epochs_run: int
    max_test_acc: float
    last: dict[str, Any]  # the last epoch's metrics record
    main: bool = True  # False on torchrun ranks other than 0, which print and write nothing


def train(
    config: TrainConfig,
    resume: Path | None = None,
    *,
    allow_new_store: bool = False,
    root_from_run: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train `config`'s recipe, or continue the run whose checkpoint is `resume`: on the frames
    it trained on (same events, FrameSpec and sample counts), or on others when
    `allow_new_store`; with `root_from_run`, on the dataset root the run recorded (the CLI's
    choice when --root is not given). Each epoch: one printed line, one metrics.jsonl record,
    TensorBoard scalars (when installed), checkpoint_latest.pth and, on a new best test
    accuracy, checkpoint_max.pth; then `on_epoch(record)`. On CPU, E epochs equal E' < E and a
    resume, bit for bit. Under torchrun every process trains on its share of each shuffled
    epoch and tests on the whole test split; rank 0 alone prints and writes."""
    set_cpu_threads()  # torch's CPU threads: no more than this process's CPUs
    with Job(training_device(config)) as job:  # each stage ends on every process together
        # config: a new run, or the checkpoint it continues
        config, run, ckpt, notes = job.stage(_start, config, resume, root_from_run)
        source = checkpoint_file(resume) if resume is not None else None
        job.enter_context(run)  # its lock and TensorBoard's writer, once rank 0 holds them
        # data: rank 0 builds the frame store if missing, the others wait
        workers = max(config.workers, 1)
        job.stage(build_frame_store, config.root, config.frame_spec, workers=workers,
                  progress=config.progress, main_only=True)  # fmt: skip
        loaders, frames = job.stage(_data, config, job)
        if ckpt is not None:
            notes += job.stage(check_resume_frames, ckpt.get("frames"), frames, source,
                               allow_new_store)  # fmt: skip
        # model and optimizer, restored when resuming
        parts = job.stage(_model, config, job)
        first_epoch, max_test_acc = 0, 0.0
        if ckpt is not None:
            notes.append(job.stage(restore, ckpt, parts, job.rank, job.world_size, source))
            first_epoch, max_test_acc = ckpt["epoch"] + 1, float(ckpt["max_test_acc"])
        # the run directory: nothing is written before every process has passed its checks
        notes += job.stage(run.open, config, first_epoch, frames, main_only=True) or []
        model = job.wrap(parts["net"])  # (a collective: after the stages)
        if job.main:
            print(f"run directory: {run.path}  (frames: {frames['path']}, {job.world_size} "
                  "process(es))", *filter(None, notes), sep="\n")  # fmt: skip
        # the loop: train, test, checkpoint
        record: dict[str, Any] = {}
        watch = FiniteWatch(parts["net"], job.device)  # the net's final tensors, restored
        for epoch in range(first_epoch, config.epochs):
            record = _epoch(epoch, config, job, parts, model, watch, loaders, run, max_test_acc)
            improved, max_test_acc = record["test_acc"] > max_test_acc, record["max_test_acc"]
            states = job.gather(rng_state())  # where each process's next dropout masks start
            job.stage(_save_epoch, run, parts, record, improved, on_epoch, main_only=True,
                      rng=states, config=config.to_dict(), world_size=job.world_size,
                      frames=frames)  # fmt: skip
        return TrainResult(run.path, config.epochs - first_epoch, max_test_acc, record, job.main)


def _start(
    config: TrainConfig, resume: Path | None, root_from_run: bool
) -> tuple[TrainConfig, Run, dict[str, Any] | None, list[str]]:
    """The run: a new one, or the one the checked checkpoint `resume` continues, on the dataset
    root that checkpoint records when `root_from_run`. Also the notes to print."""
    if resume is None:
        return config, prepare_run(config), None, []
    ckpt = load_resumable(resume)
    notes = []
    if root_from_run and ckpt["config"].get("root"):
        root = recorded_root(ckpt["config"]["root"], checkpoint_file(resume))
        config = replace(config, root=str(root))
        notes.append(f"note: dataset root {root}, as the run recorded (--root to change)")
    return config, prepare_run(config, resume, ckpt), ckpt, notes


def _data(config: TrainConfig, job: Job) -> tuple[tuple[Any, Any], dict[str, Any]]:
    """The loaders (this process's share of the train split, the whole test split), and what
    identifies their frames (a checkpoint's `frames`, a frames.json entry)."""
    store = frame_store_path(Path(config.root), config.frame_spec)
    args = {"device": job.device, "seed": config.seed, "workers": config.workers}
    train_loader = make_loader(store, "train", config.batch_size, shuffle=True, drop_last=True,
                               rank=job.rank, world_size=job.world_size, **args)  # fmt: skip
    test_loader = make_loader(store, "test", config.batch_size, shuffle=False, drop_last=False,
                              **args)  # fmt: skip
    if len(train_loader) == 0:
        raise InputError(
            f"{store} has {train_loader.num_samples} training samples per process, fewer than "
            f"one batch of {config.batch_size}; lower --batch-size"
        )
    attrs = dict(open_frame_store(store).attrs)
    events = attrs.get("events") if isinstance(attrs.get("events"), dict) else {}
    return (train_loader, test_loader), {
        "path": str(store),
        "build_id": attrs.get("build_id", ""),
        "events_checksum": events.get("checksum", ""),
        **FrameSpec.from_dict(attrs).to_dict(),
        "samples": {"train": len(train_loader.dataset), "test": len(test_loader.dataset)},
    }


def _model(config: TrainConfig, job: Job) -> dict[str, Any]:
    """The seeded GestureNet on the job's device (its weights a function of --seed alone), its
    optimizer, scheduler and GradScaler: what a checkpoint keeps the states of."""
    seed_everything(config.seed)
    net = GestureNet(config.channels, config.mode, config.backend, neuron=config.neuron,
                     init_tau=config.init_tau, fused=config.fused,
                     compile_steps=config.compile_steps, size=config.size)  # fmt: skip
    if config.sync_bn and job.world_size > 1:
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    net.to(job.device)
    if job.device.type == "cuda":
        # Kernel autotuning pays off for the fixed input shape. NHWC suits cuDNN's fp16
        # convolutions; GestureNet then lays its input out NHWC too, and the CuPy kernels run
        # on NHWC activations as they are (lif_cupy.storage_is_time_major).
        torch.backends.cudnn.benchmark = True
        if config.channels_last:
            net.to(memory_format=torch.channels_last)
    torch.manual_seed(config.seed + job.rank)  # a fresh run's dropout masks: from (seed, rank)
    optimizer, scheduler = build_optim(config, net.parameters(), job.device)
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp)
    return {"net": net, "optimizer": optimizer, "lr_scheduler": scheduler, "scaler": scaler}


def build_optim(
    config: TrainConfig, params: Any, device: torch.device
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The recipe's optimizer and scheduler. On CUDA the fused kernels: with them GradScaler
    unscales and skips inf steps on the device instead of reading `found_inf` on the host
    after every step."""
    cls = torch.optim.SGD if config.opt == "sgd" else torch.optim.Adam
    kwargs: dict[str, Any] = {"lr": config.lr}
    if config.opt == "sgd":
        kwargs["momentum"] = config.momentum
    if device.type == "cuda" and "fused" in inspect.signature(cls).parameters:
        kwargs["fused"] = True
    optimizer = cls(params, **kwargs)
    if config.lr_scheduler == "cosalr":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.T_max)
    else:
        scheduler = torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=config.step_size, gamma=config.gamma
        )
    return optimizer, scheduler


def _epoch(
    epoch: int,
    config: TrainConfig,
    job: Job,
    parts: dict[str, Any],
    model: nn.Module,
    watch: FiniteWatch,
    loaders: tuple[Any, Any],
    run: Run,
    max_test_acc: float,
) -> dict[str, Any]:
    """Train one epoch, stop if it diverged, test: the epoch's metrics record."""
    from tqdm.auto import tqdm

    def bar(loader: Any, split: str) -> Any:
        return tqdm(total=loader.num_samples, desc=f"epoch {epoch} {split}", unit="sample",
                    leave=False, disable=not (config.progress and job.main))  # fmt: skip

    net, optimizer, train_loader, test_loader = parts["net"], parts["optimizer"], *loaders
    start = time.perf_counter()
    train_loader.set_epoch(epoch)
    net.train()
    watch.start_epoch()
    with bar(train_loader, "train") as b:
        sums = run_epoch(model, train_loader, job.device, config.amp, b, optimizer, parts["scaler"],
                         watch)  # fmt: skip
    train = job.all_sum(sums).tolist()  # the epoch's one host sync (and all-reduce)
    job.stage(_check_finite, watch, epoch, run.path, config.lr)  # before anything is written
    train_time = time.perf_counter() - start
    lr = optimizer.param_groups[0]["lr"]  # the rate this epoch trained with
    parts["lr_scheduler"].step()
    net.eval()
    job.sync_buffers(net)
    with torch.inference_mode(), bar(test_loader, "test") as b:
        test = run_epoch(net, test_loader, job.device, config.amp, b).tolist()
    test_acc = test[1] / test[2]
    record = {
        "epoch": epoch,
        "train_loss": train[0] / train[2],
        "train_acc": train[1] / train[2],
        "test_loss": test[0] / test[2],
        "test_acc": test_acc,
        "max_test_acc": max(max_test_acc, test_acc),
        "total_time": time.perf_counter() - start,
        "train_samples_per_s": train[2] / train_time,
        "lr": lr,
        "train_samples": int(train[2]),
        "test_samples": int(test[2]),
    }
    if config.neuron == "plif":  # the learned membrane time constants, 1 + exp(-w)
        record["tau"] = net.learned_taus()
    return record


def _save_epoch(
    run: Run,
    parts: dict[str, Any],
    record: dict[str, Any],
    improved: bool,
    on_epoch: Callable[[dict[str, Any]], None] | None,
    **fields: Any,
) -> None:
    """Rank 0's end of an epoch: its checkpoint (`fields` beside the states of `parts`) and
    metrics line (dvsgkit.run), its printed line, then `on_epoch`."""
    epoch, best = record["epoch"], record["max_test_acc"]
    ckpt = new_checkpoint(parts, epoch=epoch, max_test_acc=best, **fields)
    run.write_epoch(record, checkpoint_bytes(ckpt), improved)
    r = record
    print(
        f"epoch={r['epoch']}, train_loss={r['train_loss']:.6f}, train_acc={r['train_acc']:.4f}, "
        f"test_loss={r['test_loss']:.6f}, test_acc={r['test_acc']:.4f}, "
        f"max_test_acc={r['max_test_acc']:.4f}, total_time={r['total_time']:.2f}, "
        f"train_samples/s={r['train_samples_per_s']:.1f}",
        flush=True,
    )
    if on_epoch is not None:
        on_epoch(record)


def _check_finite(watch: FiniteWatch, epoch: int, run_dir: Path, lr: float) -> None:
    """Stop when `epoch`'s training made the loss or the weights non-finite: its checkpoint is
    never written, so the latest one stays the last finite one."""
    problem = watch.problem(epoch)
    if problem is not None:
        latest = run_dir / LATEST
        kept = (
            f"{latest} stays the latest checkpoint (nothing of epoch {epoch} was written)"
            if latest.is_file()
            else "no checkpoint was written"
        )
        raise TrainingDiverged(
            f"{problem}; {kept}; train again with a lower --lr (this run's: {lr:g})"
        )
