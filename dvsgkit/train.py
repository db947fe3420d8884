"""The training loop (the seed recipe): per-epoch metrics and checkpoints, exact resume, DDP
under torchrun. The run directory's files are dvsgkit.run's."""

from __future__ import annotations

import contextlib
import inspect
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dvsgkit.config import TrainConfig
from dvsgkit.constants import SPLITS
from dvsgkit.data import make_loader
from dvsgkit.device import parse_device, set_cpu_threads
from dvsgkit.distributed import (
    Dist,
    all_sum,
    close_distributed,
    gather_rng,
    init_distributed,
    sync_buffers,
    together,
)
from dvsgkit.errors import InputError, storage_errors
from dvsgkit.frames import FrameSpec
from dvsgkit.framestore.build import build_frame_store, frame_store_path
from dvsgkit.framestore.read import open_frame_store
from dvsgkit.fs import sweep
from dvsgkit.model import GestureNet
from dvsgkit.objective import new_sums, score_batch
from dvsgkit.run import BEST, CONFIG, LATEST, TENSORBOARD, checkpoint_file, recorded_root
from dvsgkit.run.checkpoint import load_state, load_weights, new_checkpoint, save_atomic
from dvsgkit.run.divergence import FiniteWatch, TrainingDiverged
from dvsgkit.run.metrics import append_metrics, truncate_metrics
from dvsgkit.run.prepare import check_unchanged, latest_stamp, prepare_run, run_lock
from dvsgkit.run.provenance import check_resume_frames, frames_provenance, record_frames
from dvsgkit.run.rng import RngState, seed_everything


def _check_runtime(config: TrainConfig) -> torch.device:
    """Refuse option combinations this machine cannot run, naming the fix."""
    device = parse_device(config.device)
    if config.amp and device.type != "cuda":
        raise InputError(
            f"--amp needs a CUDA device (float16 autocast + GradScaler), got --device "
            f"{config.device}; drop --amp on CPU"
        )
    if config.sync_bn and device.type != "cuda":
        raise InputError(
            f"--sync-bn needs CUDA devices (torch's SyncBatchNorm runs on GPUs only), got "
            f"--device {config.device}; drop --sync-bn"
        )
    if config.compile_steps and device.type == "cuda":
        from dvsgkit.model.graphs import compile_unavailable_reason

        reason = compile_unavailable_reason(device)
        if reason is not None:
            raise InputError(f"--compile cannot run: {reason}; or train without --compile")
    if config.cupy:
        from dvsgkit.model.lif_cupy import cupy_unavailable_reason

        reason = cupy_unavailable_reason()
        if reason is not None:
            raise InputError(f"--cupy cannot run: {reason}; or train without --cupy")
        if device.type != "cuda":
            raise InputError(f"--cupy runs CUDA kernels, got --device {config.device}")
    return device


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    epochs_run: int
    max_test_acc: float
    last: dict[str, Any]  # the last epoch's metrics record
    main: bool = True  # False on torchrun ranks other than 0, which print and write nothing


def build_optim(
    config: TrainConfig, params: Any, device: torch.device
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The seed's optimizer and scheduler. On CUDA the fused kernels: with them GradScaler
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


def _frame_store(config: TrainConfig) -> tuple[Path, dict[str, Any]]:
    """The frame store (built by rank 0 before) and its provenance. A store at that path made
    with another T is refused by build_frame_store."""
    store = frame_store_path(Path(config.root), FrameSpec(config.T, config.split_by))
    attrs = dict(open_frame_store(store).attrs)
    if attrs.get("T") != config.T or attrs.get("split_by") != config.split_by:
        raise InputError(
            f"{store} holds T={attrs.get('T')}, split_by={attrs.get('split_by')!r} frames but "
            f"this run asks for -T {config.T} --split-by {config.split_by}; move the store "
            "away to rebuild it"
        )
    samples = {split: open_frame_store(store, split)["frames"].shape[0] for split in SPLITS}
    return store, frames_provenance(store, attrs, samples)


def _run_epoch(
    net: nn.Module,
    loader: Any,
    device: torch.device,
    amp: bool,
    optimizer: torch.optim.Optimizer | None,
    scaler: torch.amp.GradScaler | None,
    bar: Any,
    watch: FiniteWatch | None = None,
) -> torch.Tensor:
    """One pass; trains when an optimizer is given, `watch` recording whether each step left the
    loss and the weights finite. Returns [loss sum, correct, samples] on the device: the sums
    (and the watch's record) stay there so no step waits for the host."""
    sums = new_sums(device)
    for frames, labels in loader:
        loss, _ = score_batch(net, frames, labels, sums, amp=amp)
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if watch is not None:
                watch.step(loss)
        bar.update(labels.numel())
    return sums


def _build_net(config: TrainConfig, device: torch.device, d: Dist) -> nn.Module:
    """The seeded GestureNet on `device` (weights are a function of --seed alone)."""
    seed_everything(config.seed)
    net = GestureNet(
        config.channels,
        config.mode,
        config.backend,
        neuron=config.neuron,
        init_tau=config.init_tau,
        fused=config.fused,
        compile_steps=config.compile_steps,
    )
    if config.sync_bn and d.world_size > 1:
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    net.to(device)
    if device.type == "cuda":
        # Kernel autotuning pays off for the fixed input shape. NHWC suits cuDNN's fp16
        # convolutions; GestureNet then lays its input out NHWC too, and the CuPy kernels run
        # on NHWC activations as they are (lif_cupy.storage_is_time_major).
        torch.backends.cudnn.benchmark = True
        if config.channels_last:
            net.to(memory_format=torch.channels_last)
    # Dropout masks differ between ranks: a fresh run draws them from (seed, rank).
    torch.manual_seed(config.seed + d.rank)
    return net


def _restore(ckpt: dict[str, Any], parts: dict[str, Any], d: Dist, source: Path | None) -> None:
    """Load a checkpoint's states into `parts` (net, optimizer, lr_scheduler, scaler) and put
    this rank's RNGs where they were when it was written."""
    for key, part in parts.items():
        if key not in ckpt:
            raise InputError(f"{source} lacks {key!r}; it cannot resume a run")
        if key == "net":
            load_weights(part, ckpt[key], source)
        elif ckpt[key]:  # a run without AMP saved an empty scaler state
            load_state(part, ckpt[key], key, source)
    states = ckpt.get("rng", [])
    if len(states) == d.world_size:
        load_state(RngState(), states[d.rank], "rng", source)
    elif d.main:
        print(
            f"note: {source} was written by {len(states)} process(es), this job has "
            f"{d.world_size}; dropout masks restart from the seed (not bit-exact)"
        )


def _check_finite(watch: FiniteWatch, epoch: int, run_dir: Path, config: TrainConfig) -> None:
    """Stop (TrainingDiverged) when `epoch`'s training made the loss or the weights non-finite:
    its checkpoint is never written, so the latest one stays the last finite one."""
    problem = watch.problem(epoch)
    if problem is None:
        return
    latest = run_dir / LATEST
    kept = (
        f"{latest} stays the latest checkpoint (nothing of epoch {epoch} was written)"
        if latest.is_file()
        else "no checkpoint was written"
    )
    raise TrainingDiverged(
        f"{problem}; {kept}; train again with a lower --lr (this run's: {config.lr:g})"
    )


def _run_writes(run_dir: Path) -> Any:
    """A failed write into `run_dir` (a full disk, a read-only mount) as one line naming the file,
    the cause and the checkpoint to resume from."""
    latest = run_dir / LATEST
    if latest.is_file():
        fix = f"{latest} is intact: {{remedy}}, then rerun with --resume {latest}"
    else:
        fix = "no epoch was saved: {remedy}, or choose another --out-dir"
    return storage_errors(None, "write", fix)


def _write_epoch(
    run_dir: Path, checkpoint: dict[str, Any], record: dict[str, Any], best: bool, writer: Any
) -> None:
    """Rank 0's files for one epoch: the metrics line first, then the checkpoints. A crash in
    between leaves a line for an epoch that checkpoint_latest.pth lacks, which a resume drops
    (truncate_metrics) and trains again; the other order would lose that epoch's line for good."""
    append_metrics(run_dir, record)
    if best:
        save_atomic(checkpoint, run_dir / BEST)
    save_atomic(checkpoint, run_dir / LATEST)
    if writer is not None:
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr"):
            writer.add_scalar(key, record[key], record["epoch"])
        writer.flush()
    r = record
    print(
        f"epoch={r['epoch']}, train_loss={r['train_loss']:.6f}, train_acc={r['train_acc']:.4f}, "
        f"test_loss={r['test_loss']:.6f}, test_acc={r['test_acc']:.4f}, "
        f"max_test_acc={r['max_test_acc']:.4f}, total_time={r['total_time']:.2f}, "
        f"train_samples/s={r['train_samples_per_s']:.1f}",
        flush=True,
    )


def train(
    config: TrainConfig,
    resume: Path | None = None,
    *,
    allow_new_store: bool = False,
    root_from_run: bool = False,
) -> TrainResult:
    """Train `config`'s recipe, or continue the run whose checkpoint is `resume`: on the frame
    store it trained on (same events, T, split_by and sample counts), or on another one when
    `allow_new_store`. With `root_from_run` a resumed run keeps the dataset root its checkpoint
    records instead of `config.root` (the CLI's choice when --root is not given).

    Per epoch: one printed line, one metrics.jsonl record, TensorBoard scalars (when installed),
    checkpoint_latest.pth, and checkpoint_max.pth on a new best test accuracy. On CPU, training
    E epochs equals training E' < E and resuming, bit for bit. Under torchrun every rank trains
    on its share of each batch-shuffled epoch and tests on the whole test split (equal shares
    would pad it with repeats); rank 0 alone prints and writes.
    """
    from tqdm.auto import tqdm

    device = _check_runtime(config)
    set_cpu_threads()  # torch's CPU threads: no more than this process's CPUs
    d, device = init_distributed(device)
    writer = None  # TensorBoard's, on the main process when installed
    held = contextlib.ExitStack()  # the run directory's lock and TensorBoard's writer
    try:
        # Each block ends on every rank together, so that a failure on one (rank 0's checks and
        # writes) stops the others too; see `together`.
        notes = []  # printed once the run directory is announced
        with together(d):
            run_dir, ckpt = prepare_run(config, resume)
            if ckpt is not None and root_from_run and ckpt["config"].get("root"):
                root = recorded_root(ckpt["config"]["root"], checkpoint_file(resume))
                config = replace(config, root=str(root))
                notes.append(f"note: dataset root {root}, as the run recorded (--root to change)")
            stamp = latest_stamp(run_dir)  # what this run starts from, checked again under the lock
            if d.main:  # build the frame store if missing; the others wait
                workers = max(config.workers, 1)
                build_frame_store(
                    config.root, FrameSpec(config.T, config.split_by), workers=workers,
                    progress=config.progress,
                )  # fmt: skip
        with together(d):
            store, provenance = _frame_store(config)
            if ckpt is not None:
                source = checkpoint_file(resume)
                old = ckpt.get("frames")
                notes += check_resume_frames(old, provenance, source, allow_new_store)
            net = _build_net(config, device, d)
            optimizer, scheduler = build_optim(config, net.parameters(), device)
            scaler = torch.amp.GradScaler("cuda", enabled=config.amp)
            parts = {
                "net": net,
                "optimizer": optimizer,
                "lr_scheduler": scheduler,
                "scaler": scaler,
            }
            start_epoch, max_test_acc = 0, 0.0
            if ckpt is not None:
                _restore(ckpt, parts, d, resume)
                start_epoch, max_test_acc = ckpt["epoch"] + 1, float(ckpt["max_test_acc"])

            loader_args = {"device": device, "seed": config.seed, "workers": config.workers}
            train_loader = make_loader(
                store, "train", config.batch_size, shuffle=True, drop_last=True,
                rank=d.rank, world_size=d.world_size, **loader_args,
            )  # fmt: skip
            test_loader = make_loader(
                store, "test", config.batch_size, shuffle=False, drop_last=False, **loader_args
            )
            if len(train_loader) == 0:
                raise InputError(
                    f"{store} has {train_loader.num_samples} training samples per process, fewer "
                    f"than one batch of {config.batch_size}; lower --batch-size"
                )

        with together(d):  # nothing is written before every rank has passed its checks
            if d.main:
                with _run_writes(run_dir):
                    run_dir.mkdir(parents=True, exist_ok=True)
                    held.enter_context(run_lock(run_dir))  # one process trains here at a time
                    check_unchanged(config, run_dir, stamp, resumed=ckpt is not None)
                    sweep(run_dir)  # checkpoint writes of a killed run
                    config.save_json(run_dir / CONFIG)
                    notes.append(record_frames(run_dir, provenance, start_epoch))
                    truncate_metrics(run_dir, start_epoch - 1)
                    writer = _tensorboard(run_dir, start_epoch)
                    if writer is not None:  # flushed on errors too, before the lock goes
                        held.callback(writer.close)
        model = net
        if d.world_size > 1:  # (a collective: after the blocks above)
            ids = [device.index] if device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(net, device_ids=ids)
        if d.main:
            print(f"run directory: {run_dir}  (frames: {store}, {d.world_size} process(es))")
            for note in filter(None, notes):
                print(note)

        def bar(total: int, desc: str) -> Any:
            show = config.progress and d.main
            return tqdm(total=total, desc=desc, unit="sample", leave=False, disable=not show)

        record: dict[str, Any] = {}
        watch = FiniteWatch(net, device)  # the net's final tensors: on its device, restored
        for epoch in range(start_epoch, config.epochs):
            start = time.perf_counter()
            train_loader.set_epoch(epoch)
            net.train()
            watch.start_epoch()
            with bar(train_loader.num_samples, f"epoch {epoch} train") as b:
                sums = _run_epoch(
                    model, train_loader, device, config.amp, optimizer, scaler, b, watch
                )
            train_sums = all_sum(sums, d).tolist()  # the epoch's one host sync (and all-reduce)
            with together(d):  # a diverged run stops on every rank, before anything is written
                _check_finite(watch, epoch, run_dir, config)
            train_time = time.perf_counter() - start
            lr = optimizer.param_groups[0]["lr"]  # the rate this epoch trained with
            scheduler.step()

            net.eval()
            sync_buffers(net, d)
            with torch.inference_mode(), bar(test_loader.num_samples, f"epoch {epoch} test") as b:
                test_sums = _run_epoch(net, test_loader, device, config.amp, None, None, b)
            test_sums = test_sums.tolist()

            test_acc = test_sums[1] / test_sums[2]
            best = test_acc > max_test_acc
            max_test_acc = max(max_test_acc, test_acc)
            states = gather_rng(d)  # where the next epoch's dropout masks start, per rank
            record = {
                "epoch": epoch,
                "train_loss": train_sums[0] / train_sums[2],
                "train_acc": train_sums[1] / train_sums[2],
                "test_loss": test_sums[0] / test_sums[2],
                "test_acc": test_acc,
                "max_test_acc": max_test_acc,
                "total_time": time.perf_counter() - start,
                "train_samples_per_s": train_sums[2] / train_time,
                "lr": lr,
                "train_samples": int(train_sums[2]),
                "test_samples": int(test_sums[2]),
            }
            if config.neuron == "plif":  # the learned membrane time constants, 1 + exp(-w)
                record["tau"] = net.learned_taus()
            with together(d):  # a full disk on rank 0 stops every rank
                if d.main:
                    # The first epoch always makes checkpoint_max.pth, even at 0 % (nothing
                    # beats the initial 0): evaluate and the demo expect it after any run.
                    best = best or not (run_dir / BEST).exists()
                    checkpoint = new_checkpoint(
                        parts,
                        epoch=epoch,
                        max_test_acc=max_test_acc,
                        rng=states,
                        config=config.to_dict(),
                        world_size=d.world_size,
                        frames=provenance,
                    )
                    with _run_writes(run_dir):
                        _write_epoch(run_dir, checkpoint, record, best, writer)
        return TrainResult(run_dir, config.epochs - start_epoch, max_test_acc, record, d.main)
    finally:
        try:
            held.close()  # TensorBoard's writer, then the run directory's lock
        finally:
            close_distributed(d)


def _tensorboard(run_dir: Path, start_epoch: int) -> Any:
    """A SummaryWriter into run_dir/tensorboard when tensorboard is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    # purge_step drops events a crashed or extended run logged after its checkpoint.
    return SummaryWriter(str(run_dir / TENSORBOARD), purge_step=start_epoch)
