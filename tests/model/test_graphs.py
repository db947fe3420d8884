"""Which networks' BatchNorms the compiled time steps can update outside the graph."""

from __future__ import annotations

from torch import nn

from dvsgkit.model.graphs import plain_batchnorms


def test_only_plain_batchnorms_with_one_momentum_are_updated_outside_the_graph() -> None:
    bns = nn.ModuleList(nn.BatchNorm2d(4) for _ in range(3))
    assert plain_batchnorms(bns)
    bns[2].momentum = 0.2  # the update uses one momentum for every layer
    assert not plain_batchnorms(bns)
    bns[2].momentum = None  # cumulative average
    assert not plain_batchnorms(bns)
    assert not plain_batchnorms(nn.ModuleList([nn.SyncBatchNorm(4)]))
    assert not plain_batchnorms(nn.ModuleList([nn.BatchNorm2d(4, track_running_stats=False)]))
