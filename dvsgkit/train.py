"""The training loop (the seed recipe): checkpoints, metrics, exact resume, DDP under torchrun."""

from __future__ import annotations

import inspect
import io
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from dvsgkit import __version__
from dvsgkit.config import TrainConfig
from dvsgkit.constants import NUM_CLASSES, SPLITS
from dvsgkit.data import make_loader
from dvsgkit.io.atomic import atomic_path, remove_dead_temps, write_text_atomic
from dvsgkit.model import GestureNet
from dvsgkit.plots import METRICS, read_metrics
from dvsgkit.run import (
    append_line,
    check_checkpoint,
    check_resume_frames,
    frames_provenance,
    load_state,
    load_weights,
    record_frames,
    run_writes,
)
from dvsgkit.store.frames import build_frame_store, frame_store_path, open_frame_store

CHECKPOINT_FORMAT = "dvsgkit.checkpoint"
CHECKPOINT_VERSION = 1
LATEST, BEST = "checkpoint_latest.pth", "checkpoint_max.pth"
CONFIG = "config.json"


# ----------------------------------------------------------------------------- files


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """torch.save to a temp name in the same folder, fsync, then rename: a crash mid-write leaves
    the previous checkpoint intact, never a truncated one under the real name."""
    # Serialised in memory first: on a full disk torch's zip writer fails with an opaque
    # RuntimeError, a plain write with an OSError that names the cause.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(buffer.getbuffer())
        f.flush()
        os.fsync(f.fileno())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load any checkpoint with `weights_only=True` (a pickle could otherwise run code)."""
    path = Path(path)
    if path.is_dir():
        path = path / LATEST
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; pass a .pth file or a run directory")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a truncated or foreign file
        raise ValueError(
            f"{path} is not a readable checkpoint ({type(exc).__name__}: {exc}); it may be "
            "truncated or not a weights-only torch file: resume from another checkpoint"
        ) from exc
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("net"), dict):
        raise ValueError(f"{path} holds no 'net' state dict; is it a training checkpoint?")
    return ckpt


def is_dvsgkit_checkpoint(ckpt: dict[str, Any]) -> bool:
    return ckpt.get("format") == CHECKPOINT_FORMAT


def _truncate_metrics(run_dir: Path, last_epoch: int) -> None:
    """Drop records after the checkpoint's epoch (a crash between the metrics line and the
    checkpoint, or a resume from checkpoint_max) and a line cut short, so metrics.jsonl stays
    one line per epoch."""
    path = run_dir / METRICS
    if not path.is_file():
        return
    keep = [m for m in read_metrics(run_dir) if m["epoch"] <= last_epoch]
    write_text_atomic(path, "".join(json.dumps(m) + "\n" for m in keep))


# ----------------------------------------------------------------------------- run directory


def parse_device(text: str) -> torch.device:
    """`--device` as a torch.device; ValueError naming the fix when it cannot run here."""
    try:
        device = torch.device(text)
    except RuntimeError as exc:  # torch's message for a malformed device string
        raise ValueError(f"--device {text}: {exc}; use e.g. cpu, cuda or cuda:0") from exc
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {text}: dvsgkit runs on cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {text}: no CUDA device here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                "use cuda:0 .. cuda:N-1"
            )
    return device


def _check_runtime(config: TrainConfig) -> torch.device:
    """Refuse option combinations this machine cannot run, naming the fix."""
    device = parse_device(config.device)
    if config.amp and device.type != "cuda":
        raise ValueError(
            f"--amp needs a CUDA device (float16 autocast + GradScaler), got --device "
            f"{config.device}; drop --amp on CPU"
        )
    if config.sync_bn and device.type != "cuda":
        raise ValueError(
            f"--sync-bn needs CUDA devices (torch's SyncBatchNorm runs on GPUs only), got "
            f"--device {config.device}; drop --sync-bn"
        )
    if config.cupy:
        from dvsgkit.model.lif_cupy import cupy_unavailable_reason

        reason = cupy_unavailable_reason()
        if reason is not None:
            raise ValueError(f"--cupy cannot run: {reason}; or train without --cupy")
        if device.type != "cuda":
            raise ValueError(f"--cupy runs CUDA kernels, got --device {config.device}")
    return device


def prepare_run(config: TrainConfig, resume: Path | None) -> tuple[Path, dict[str, Any] | None]:
    """The run directory and the checkpoint to resume from (None: a fresh run). Refuses, before
    anything is written, to start over a run that exists or to resume an incompatible one."""
    if resume is None:
        run_dir = config.run_dir()
        if (run_dir / LATEST).exists():
            raise FileExistsError(
                f"{run_dir} already holds a run ({_progress(run_dir)}); continue it "
                f"with --resume {run_dir / LATEST} (and a larger --epochs to extend it), or "
                "choose another --out-dir"
            )
        if (run_dir / CONFIG).exists():
            old = TrainConfig.load_json(run_dir / CONFIG)
            diff = old.recipe_differences(config)
            if diff:
                raise FileExistsError(
                    f"{run_dir} holds a different run ({_describe(diff)}); choose another --out-dir"
                )
        return run_dir, None
    ckpt = load_checkpoint(resume)
    if not is_dvsgkit_checkpoint(ckpt):
        raise ValueError(
            f"{resume} is not a dvsgkit training checkpoint (a SpikingJelly one?); resuming needs "
            "the optimizer, scheduler and RNG states only dvsgkit checkpoints hold"
        )
    old = check_checkpoint(ckpt, checkpoint_file(resume), resume=True)
    diff = old.recipe_differences(config)
    if diff:
        raise ValueError(
            f"cannot resume {resume}: it was trained with {_describe(diff)}; pass the same "
            "options (only --epochs, --device, --workers, --amp and --out-dir may change)"
        )
    if ckpt["epoch"] + 1 >= config.epochs:
        raise ValueError(
            f"{resume} has already trained {ckpt['epoch'] + 1} epochs; pass --epochs larger "
            f"than {ckpt['epoch'] + 1} to extend it"
        )
    resume = Path(resume)
    return (resume if resume.is_dir() else resume.parent), ckpt


def _progress(run_dir: Path) -> str:
    """'epochs 0..k of N done' from metrics.jsonl, for messages about an existing run."""
    try:
        done = read_metrics(run_dir)
        planned = TrainConfig.load_json(run_dir / CONFIG).epochs
    except (OSError, ValueError):
        return "its metrics are unreadable"
    if not done:
        return "no epoch recorded"
    last = done[-1]["epoch"]
    state = "finished" if last + 1 >= planned else "unfinished"
    return f"{state}: epochs 0..{last} of {planned} done"


def _describe(diff: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k}={old!r} (now {new!r})" for k, (old, new) in diff.items())


# ----------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    """Every RNG the loop touches, as tensors and plain types (loads with weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": [version, list(py_state), py_gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = state["python"]
    random.setstate((version, tuple(py_state), py_gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds the CUDA generators too


# ----------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the torchrun job named by the environment; NCCL on CUDA (one GPU per process), gloo on
    CPU. Without torchrun's variables this is a single process and nothing is initialised.
    The training GPU becomes the current device either way: the checkpoint's CUDA RNG state
    (rng_state) is the current device's, and the dropout masks come from the training GPU's."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)
        return Dist(), device
    d = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return d, device


def _all_sum(values: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world_size > 1:
        dist.all_reduce(values)
    return values


# ----------------------------------------------------------------------------- the loop


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


def _frame_store(config: TrainConfig, d: Dist) -> tuple[Path, dict[str, Any]]:
    """Build the frame store if missing (rank 0 only; the others wait); return it and its
    provenance. A store at that path made with another T is refused by build_frame_store."""
    root = Path(config.root)
    if d.main:
        workers = max(config.workers, 1)
        build_frame_store(
            root, config.T, config.split_by, workers=workers, progress=config.progress
        )
    if d.world_size > 1:
        dist.barrier()
    store = frame_store_path(root, config.T, config.split_by)
    attrs = dict(open_frame_store(store).attrs)
    if attrs.get("T") != config.T or attrs.get("split_by") != config.split_by:
        raise ValueError(
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
) -> torch.Tensor:
    """One pass; trains when an optimizer is given. Returns [loss sum, correct, samples] on the
    device: the sums stay there so no step waits for the host."""
    sums = torch.zeros(3, device=device, dtype=torch.float64)
    for frames, labels in loader:
        onehot = F.one_hot(labels, NUM_CLASSES).float()
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            rates = net(frames)  # [B, 11] firing rates
        loss = F.mse_loss(rates.float(), onehot)
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        n = labels.numel()
        sums[0] += loss.detach() * n
        sums[1] += (rates.argmax(1) == labels).sum()
        sums[2] += n
        bar.update(n)
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
            raise ValueError(f"{source} lacks {key!r}; it cannot resume a run")
        if key == "net":
            load_weights(part, ckpt[key], source)
        elif ckpt[key]:  # a run without AMP saved an empty scaler state
            load_state(part, ckpt[key], key, source)
    states = ckpt.get("rng", [])
    if len(states) == d.world_size:
        load_state(_RngState(), states[d.rank], "rng", source)
    elif d.main:
        print(
            f"note: {source} was written by {len(states)} process(es), this job has "
            f"{d.world_size}; dropout masks restart from the seed (not bit-exact)"
        )


def _write_epoch(
    run_dir: Path, checkpoint: dict[str, Any], record: dict[str, Any], best: bool, writer: Any
) -> None:
    """Rank 0's files for one epoch: the metrics line first, then the checkpoints. A crash in
    between leaves a line for an epoch that checkpoint_latest.pth lacks, which a resume drops
    (_truncate_metrics) and trains again; the other order would lose that epoch's line for good."""
    append_line(run_dir / METRICS, json.dumps(record) + "\n")
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
    config: TrainConfig, resume: Path | None = None, *, allow_new_store: bool = False
) -> TrainResult:
    """Train `config`'s recipe, or continue the run whose checkpoint is `resume`: on the frame
    store it trained on (same events, T, split_by and sample counts), or on another one when
    `allow_new_store`.

    Per epoch: one printed line, one metrics.jsonl record, TensorBoard scalars (when installed),
    checkpoint_latest.pth, and checkpoint_max.pth on a new best test accuracy. On CPU, training
    E epochs equals training E' < E and resuming, bit for bit. Under torchrun every rank trains
    on its share of each batch-shuffled epoch and tests on the whole test split (equal shares
    would pad it with repeats); rank 0 alone prints and writes.
    """
    from tqdm.auto import tqdm

    device = _check_runtime(config)
    d, device = _init_distributed(device)
    try:
        run_dir, ckpt = prepare_run(config, resume)
        store, provenance = _frame_store(config, d)
        notes = []  # printed once the run directory is announced
        if ckpt is not None:
            source = checkpoint_file(resume)
            notes = check_resume_frames(ckpt.get("frames"), provenance, source, allow_new_store)
        net = _build_net(config, device, d)
        optimizer, scheduler = build_optim(config, net.parameters(), device)
        scaler = torch.amp.GradScaler("cuda", enabled=config.amp)
        parts = {"net": net, "optimizer": optimizer, "lr_scheduler": scheduler, "scaler": scaler}
        start_epoch, max_test_acc = 0, 0.0
        if ckpt is not None:
            _restore(ckpt, parts, d, resume)
            start_epoch, max_test_acc = ckpt["epoch"] + 1, float(ckpt["max_test_acc"])
        model = net
        if d.world_size > 1:
            ids = [device.index] if device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(net, device_ids=ids)

        loader_args = {"device": device, "seed": config.seed, "workers": config.workers}
        train_loader = make_loader(
            store, "train", config.batch_size, shuffle=True, drop_last=True,
            rank=d.rank, world_size=d.world_size, **loader_args,
        )  # fmt: skip
        test_loader = make_loader(
            store, "test", config.batch_size, shuffle=False, drop_last=False, **loader_args
        )
        if len(train_loader) == 0:
            raise ValueError(
                f"{store} has {train_loader.num_samples} training samples per process, fewer than "
                f"one batch of {config.batch_size}; lower --batch-size"
            )

        writer = None
        if d.main:  # nothing is written before every check above has passed
            with run_writes(run_dir, run_dir / LATEST):
                run_dir.mkdir(parents=True, exist_ok=True)
                remove_dead_temps(run_dir)  # checkpoint writes of a killed run
                config.save_json(run_dir / CONFIG)
                notes.append(record_frames(run_dir, provenance, start_epoch))
                _truncate_metrics(run_dir, start_epoch - 1)
                writer = _tensorboard(run_dir, start_epoch)
            print(f"run directory: {run_dir}  (frames: {store}, {d.world_size} process(es))")
            for note in filter(None, notes):
                print(note)

        def bar(total: int, desc: str) -> Any:
            show = config.progress and d.main
            return tqdm(total=total, desc=desc, unit="sample", leave=False, disable=not show)

        record: dict[str, Any] = {}
        for epoch in range(start_epoch, config.epochs):
            start = time.perf_counter()
            train_loader.set_epoch(epoch)
            net.train()
            with bar(train_loader.num_samples, f"epoch {epoch} train") as b:
                sums = _run_epoch(model, train_loader, device, config.amp, optimizer, scaler, b)
            train_sums = _all_sum(sums, d).tolist()  # the epoch's one host sync (and all-reduce)
            train_time = time.perf_counter() - start
            lr = optimizer.param_groups[0]["lr"]  # the rate this epoch trained with
            scheduler.step()

            net.eval()
            _sync_buffers(net, d)
            with torch.inference_mode(), bar(test_loader.num_samples, f"epoch {epoch} test") as b:
                test_sums = _run_epoch(net, test_loader, device, config.amp, None, None, b)
            test_sums = test_sums.tolist()

            test_acc = test_sums[1] / test_sums[2]
            best = test_acc > max_test_acc
            max_test_acc = max(max_test_acc, test_acc)
            states = _gather_rng(d)  # where the next epoch's dropout masks start, per rank
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
            if d.main:
                # The first epoch always makes checkpoint_max.pth, even at 0 % (nothing beats
                # the initial 0): evaluate and the demo expect it after any run.
                best = best or not (run_dir / BEST).exists()
                checkpoint = {key: part.state_dict() for key, part in parts.items()}
                checkpoint |= {
                    "epoch": epoch,
                    "max_test_acc": max_test_acc,
                    "rng": states,
                    "config": config.to_dict(),
                    "world_size": d.world_size,
                    "frames": provenance,
                    "format": CHECKPOINT_FORMAT,
                    "format_version": CHECKPOINT_VERSION,
                    "dvsgkit_version": __version__,
                }
                with run_writes(run_dir, run_dir / LATEST):
                    _write_epoch(run_dir, checkpoint, record, best, writer)
        if writer is not None:
            writer.close()
        return TrainResult(run_dir, config.epochs - start_epoch, max_test_acc, record, d.main)
    finally:
        if d.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def checkpoint_file(path: Path) -> Path:
    """The .pth file that `--resume PATH` means (a run directory means its latest)."""
    path = Path(path)
    return path / LATEST if path.is_dir() else path


class _RngState:
    """set_rng_state with the load_state_dict interface, for load_state's error handling."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_rng_state(state)


def _sync_buffers(net: nn.Module, d: Dist) -> None:
    """Give every rank rank 0's BatchNorm running statistics before testing: each rank's last
    training step updated them from its own batch, and rank 0's are what the checkpoint keeps."""
    if d.world_size > 1:
        for buffer in net.buffers():
            dist.broadcast(buffer, 0)


def _gather_rng(d: Dist) -> list[dict[str, Any]]:
    """Each rank's RNG state, indexed by rank (what the next epoch's dropout masks start from)."""
    state = rng_state()
    if d.world_size == 1:
        return [state]
    states: list[Any] = [None] * d.world_size
    dist.all_gather_object(states, state)
    return states


def _tensorboard(run_dir: Path, start_epoch: int) -> Any:
    """A SummaryWriter into run_dir/tensorboard when tensorboard is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    # purge_step drops events a crashed or extended run logged after its checkpoint.
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_epoch)
