"""PLIF in training: config and run name, learned time constants in metrics.jsonl and the plot,
resume refused with another neuron, evaluate on a PLIF checkpoint, and a PLIF net that learns."""

from __future__ import annotations

import struct
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dvsgkit.config import INIT_TAU, TrainConfig
from dvsgkit.data import make_loader
from dvsgkit.evaluate import load_net
from dvsgkit.frames import FrameSpec
from dvsgkit.framestore.build import frame_store_path
from dvsgkit.model import GestureNet
from dvsgkit.model.net import SPIKING_LAYERS
from dvsgkit.plots import plot_run
from dvsgkit.run import LATEST, read_metrics
from dvsgkit.run.checkpoint import load_checkpoint
from dvsgkit.train import train

TINY = {"T": 4, "channels": 4, "batch_size": 4, "workers": 0, "device": "cpu", "progress": False}


def test_config_run_name_and_refusals() -> None:
    base = "T_16_b_16_c_128_adam_lr_0.001_cosalr_32"
    assert TrainConfig().run_name() == base and TrainConfig().neuron == "lif"
    assert TrainConfig(neuron="plif").run_name() == f"{base}_plif"
    assert TrainConfig(neuron="plif", init_tau=3.0).run_name() == f"{base}_plif_tau_3.0"
    with pytest.raises(ValueError, match=r"neuron must be one of \('lif', 'plif'\)"):
        TrainConfig(neuron="alif")
    with pytest.raises(ValueError, match="init_tau must be > 1"):
        TrainConfig(neuron="plif", init_tau=1.0)
    with pytest.raises(ValueError, match="--init-tau 3.0 sets the PLIF's .* add --neuron plif"):
        TrainConfig(init_tau=3.0)
    old = TrainConfig().to_dict()  # a config.json written before the neuron option existed
    del old["neuron"], old["init_tau"]
    assert TrainConfig.from_dict(old) == TrainConfig()
    diff = TrainConfig().recipe_differences(TrainConfig(neuron="plif"))
    assert diff == {"neuron": ("lif", "plif")}


def test_plif_state_dict_and_modes_agree() -> None:
    torch.manual_seed(0)
    step, layer = GestureNet(4, "step", neuron="plif"), GestureNet(4, "layer", neuron="plif")
    keys = [k for k in step.state_dict() if k.startswith("plif.")]
    assert keys == [f"plif.{i}.w" for i in range(7)]
    assert GestureNet(4).state_dict().keys() == GestureNet(4, neuron="lif").state_dict().keys()
    with torch.no_grad():
        for i, cell in enumerate(step.plif):
            cell.w.fill_(-0.5 + 0.2 * i)
        for bn in step.bns:
            bn.running_var.fill_(0.05)
            bn.running_mean.fill_(-0.1)
        step.fc1.weight.mul_(8)
        step.fc2.weight.mul_(8)
    layer.load_state_dict(step.state_dict())
    x = (torch.rand(2, 3, 2, 128, 128, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    grads = []
    for net in (step.eval(), layer.eval()):
        out = net(x)
        out.sum().backward()
        grads.append((out.detach(), torch.stack([c.w.grad for c in net.plif])))
    (out_s, gw_s), (out_l, gw_l) = grads
    assert out_s.max() > 0 and gw_s.abs().min() > 0
    torch.testing.assert_close(out_s, out_l, rtol=0, atol=1e-6)
    torch.testing.assert_close(gw_s, gw_l, rtol=1e-4, atol=1e-7)
    assert list(step.learned_taus()) == list(SPIKING_LAYERS)
    assert GestureNet(4).learned_taus() == {}


def _png_width(path: Path) -> int:
    return struct.unpack(">I", path.read_bytes()[16:20])[0]  # IHDR width


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({}, id="cpu"),
        pytest.param(
            {"device": "cuda", "amp": True, "cupy": True}, marks=pytest.mark.gpu, id="cuda-amp-cupy"
        ),
    ],
)
def test_plif_run_records_taus_plots_them_and_refuses_a_lif_resume(
    frame_root: Path, tmp_path: Path, changes: dict
) -> None:
    config = TrainConfig(
        root=str(frame_root), out_dir=str(tmp_path), epochs=2, neuron="plif", init_tau=3.0,
        **{**TINY, **changes},
    )  # fmt: skip
    train(config)
    run_dir = config.run_dir()
    assert "_plif_tau_3.0" in run_dir.name
    records = read_metrics(run_dir)
    assert [list(r["tau"]) for r in records] == [list(SPIKING_LAYERS)] * 2
    latest = load_checkpoint(run_dir / LATEST)
    w = torch.stack([latest["net"][f"plif.{i}.w"] for i in range(7)])
    torch.testing.assert_close(
        torch.tensor(list(records[-1]["tau"].values())), 1 + torch.exp(-w), rtol=1e-6, atol=0
    )
    assert any(abs(t - 3.0) > 1e-4 for t in records[-1]["tau"].values()), "w must be trained"
    net, meta = load_net(run_dir / LATEST)
    assert net.neuron == "plif" and meta["source"] == "dvsgkit"
    assert net.learned_taus() == pytest.approx(records[-1]["tau"])
    lif_png = tmp_path / "lif.png"
    plain = [{k: v for k, v in r.items() if k != "tau"} for r in records]
    from dvsgkit.plots import plot_curves

    plot_curves(plain, lif_png)
    assert _png_width(plot_run(run_dir)) > _png_width(lif_png)  # the third (tau) panel
    with pytest.raises(ValueError, match=r"neuron='plif' \(now 'lif'\), init_tau=3.0 \(now 2.0\)"):
        train(replace(config, epochs=3, neuron="lif", init_tau=INIT_TAU), resume=run_dir / LATEST)
    assert len(read_metrics(run_dir)) == 2


@pytest.mark.slow
def test_a_plif_net_learns_the_synthetic_set(frame_root: Path) -> None:
    store = frame_store_path(frame_root, FrameSpec(4, "number"))
    loader = make_loader(store, "train", 12, shuffle=False, drop_last=False)
    frames, labels = next(iter(loader))  # 12 samples [12, 4, 2, 128, 128], 11 classes
    torch.manual_seed(0)
    net = GestureNet(8, neuron="plif").train()
    with torch.no_grad():  # louder fc layers: the default init is nearly silent at this size
        net.fc1.weight.mul_(4)
        net.fc2.weight.mul_(4)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)

    def score() -> tuple[float, float]:
        # Batch statistics as in training, but no dropout noise (running BN statistics are far
        # from converged after 20 steps, so eval mode says little here).
        net.drop1.p = net.drop2.p = 0.0
        with torch.no_grad():
            rates = net(frames)
        net.drop1.p = net.drop2.p = 0.5
        loss = F.mse_loss(rates, F.one_hot(labels, 11).float()).item()
        return loss, (rates.argmax(1) == labels).float().mean().item()

    first_loss, _ = score()
    for _ in range(20):
        loss = F.mse_loss(net(frames), F.one_hot(labels, 11).float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    loss, acc = score()
    assert loss < 0.85 * first_loss and acc >= 0.5, (first_loss, loss, acc)  # chance: 1/11
    assert all(abs(t - 2.0) > 1e-3 for t in net.learned_taus().values())


def test_train_cli_neuron_options(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from dvsgkit_cli.main import cli

    result = CliRunner().invoke(cli, ["train", "--help"])
    assert "--neuron [lif|plif]" in result.output and "--init-tau" in result.output
    args = [
        "train",
        "--root",
        str(tmp_path),
        "--out-dir",
        str(tmp_path / "runs"),
        "--device",
        "cpu",
    ]
    result = CliRunner().invoke(cli, [*args, "--init-tau", "3"])
    assert result.exit_code == 1 and "add --neuron plif" in result.output, result.output
    result = CliRunner().invoke(cli, [*args, "--neuron", "plif", "--init-tau", "1"])
    assert result.exit_code == 2 and "--init-tau" in result.output
    assert not (tmp_path / "runs").exists()


def test_evaluate_cli_scores_a_plif_dvsgesturenet_checkpoint(
    frame_root: Path, tmp_path: Path
) -> None:
    """A SpikingJelly DVSGestureNet (PLIF) checkpoint, outputs in its label order, is scored by
    `dvsgkit evaluate` exactly as the dvsgkit net it was made from."""
    import json

    import numpy as np
    from click.testing import CliRunner

    from dvsgkit.constants import SPIKINGJELLY_LABEL_ORDER
    from dvsgkit.evaluate import confusion_matrix, predict
    from dvsgkit.model.convert import DVSG_PLIF_KEYS, LAYOUTS
    from dvsgkit_cli.main import cli

    torch.manual_seed(3)
    net = GestureNet(4, neuron="plif", hidden=20, bias=True).eval()
    with torch.no_grad():
        for bn in net.bns:
            bn.running_var.uniform_(0.03, 0.08)
            bn.running_mean.uniform_(-0.2, 0.0)
        for conv in net.convs:  # the synthetic frames are sparse: louder convolutions
            conv.weight.mul_(3)
        net.fc1.weight.mul_(8)
        net.fc2.weight.mul_(8)
        net.fc2.bias.uniform_(-0.3, 0.3)
        for i, cell in enumerate(net.plif):
            cell.w.fill_(-0.5 + 0.15 * i)
    ours = net.state_dict()
    mapping = {**LAYOUTS["DVSGestureNet"], **DVSG_PLIF_KEYS}
    state = {src: ours[key] for key, src in mapping.items()}
    order = list(SPIKINGJELLY_LABEL_ORDER)
    state["conv_fc.25.weight"] = ours["fc2.weight"].reshape(11, 10, -1)[order].reshape(110, -1)
    state["conv_fc.25.bias"] = ours["fc2.bias"].reshape(11, 10)[order].reshape(110)
    path = tmp_path / "sj_plif.pth"
    torch.save({"net": state, "epoch": 5, "max_test_acc": 0.9}, path)
    args = ["evaluate", str(path), "--root", str(frame_root), "-T", "4", "--device", "cpu"]
    result = CliRunner().invoke(cli, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "sj_plif_test_eval.json").read_text())
    assert data["source"] == "spikingjelly" and data["samples"] == 12 and data["epoch"] == 5
    store = frame_store_path(frame_root, FrameSpec(4, "number"))
    loader = make_loader(store, "test", 16, shuffle=False, drop_last=False)
    labels, preds, _ = predict(net, loader, "cpu")
    assert np.array_equal(np.array(data["confusion_matrix"]), confusion_matrix(labels, preds))
    assert len(set(preds.tolist())) > 1, "the test needs a net that tells samples apart"
