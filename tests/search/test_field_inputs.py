"""A whole search on inputs from the field (issue 18): integer token ids into an
``nn.Embedding``, a ``BatchNorm1d`` after a linear layer, and a training set that
leaves one sample in the last batch (257 samples, batches of 64)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

import protege
from protege.search import Config, Outcome


class _TokenBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(20, 16)
        self.hidden = nn.Linear(16, 32)
        self.bn = nn.BatchNorm1d(32)
        self.head = nn.Linear(32, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.hidden(self.embed(ids).mean(1)))))


def test_a_search_on_token_ids_with_a_last_batch_of_one(tmp_path):
    ids = torch.randint(0, 20, (257 + 64, 7), generator=torch.Generator().manual_seed(0))
    labels = ids[:, 0] % 3
    config = Config.from_dict({"n_trials": 2, "distill": {
        "epochs": 1, "finetune_epochs": 1, "batch_size": 64}})
    result = protege.search(_TokenBN().eval(), train=TensorDataset(ids[:257], labels[:257]),
                            val=TensorDataset(ids[257:], labels[257:]), example_input=ids[:1],
                            config=config, out=tmp_path / "run")
    assert result.pick is not None
    assert all(r.outcome != Outcome.FAILED for r in result.trials), \
        [r.reason for r in result.trials]
    assert any(r.outcome == Outcome.TRAINED for r in result.trials)
