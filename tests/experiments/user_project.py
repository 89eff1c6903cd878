"""Writes a user's project under a folder: a model module, trained weights, an image folder,
a CSV table and a LightningDataModule, all tiny, as someone outside protege would have them."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import torch

MODULE = textwrap.dedent('''
    """A user's own models and data (not protege's)."""
    import pytorch_lightning as pl
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, Dataset, TensorDataset


    class SmallCNN(nn.Module):
        def __init__(self, num_classes=3, width=8):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.head = nn.Linear(width, num_classes)

        def forward(self, x):
            return self.head(self.features(x))


    def mlp(in_features, num_classes=3, hidden=16):
        return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(),
                             nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


    def table_rows(samples=240, features=6, seed=0):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(samples, features, generator=g)
        y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
        return x, y


    class TinyDataModule(pl.LightningDataModule):
        def __init__(self, samples=240, features=6):
            super().__init__()
            self.samples, self.features = samples, features

        def setup(self, stage=None):
            x, y = table_rows(self.samples, self.features)
            cut = int(0.8 * len(x))
            self.train_set = TensorDataset(x[:cut], y[:cut])
            self.val_set = TensorDataset(x[cut:], y[cut:])

        def train_dataloader(self):
            return DataLoader(self.train_set, batch_size=32, shuffle=True)

        def val_dataloader(self):
            return DataLoader(self.val_set, batch_size=32)


    class TestedDataModule(TinyDataModule):
        def test_dataloader(self):
            return DataLoader(self.val_set, batch_size=32)


    class Dicts(Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return {"image": torch.zeros(6), "label": 0}


    def dict_data():
        return Dicts(), None


    class TokenNet(nn.Module):
        def __init__(self, vocab=20, dim=8, num_classes=3):
            super().__init__()
            self.embed = nn.Embedding(vocab, dim)
            self.hidden = nn.Sequential(nn.Linear(dim, 16), nn.ReLU())
            self.head = nn.Linear(16, num_classes)

        def forward(self, x):
            return self.head(self.hidden(self.embed(x).mean(1)))


    def tokens(samples=60, length=5):
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 20, (samples, length), generator=g)
        return TensorDataset(x, x[:, 0] % 3), None
''')

COLOURS = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]], dtype=np.float64)


def _fit(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 60) -> None:
    optimiser = torch.optim.Adam(model.parameters(), lr=0.03)
    model.train()
    for _ in range(steps):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
    model.eval()


def write_project(root: Path, *, per_class: int = 40, size: int = 8) -> Path:
    """Write ``my_models.py``, ``cnn.pt``, ``mlp.pt``, ``images/`` and ``table.csv``."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    (root / "my_models.py").write_text(MODULE)
    sys.path.insert(0, str(root))
    try:
        import my_models  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("my_models", None)
    rng = np.random.default_rng(0)
    images, labels = [], []
    for split, count in (("train", per_class), ("val", per_class // 4), ("test", per_class // 4)):
        for label, colour in enumerate(COLOURS):
            folder = root / "images" / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = np.clip(colour + rng.normal(0, 60, (size, size, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
                if split == "train":
                    images.append(torch.from_numpy(pixels / 255.0).permute(2, 0, 1).float())
                    labels.append(label)
    torch.manual_seed(0)
    cnn = my_models.SmallCNN(num_classes=3)
    _fit(cnn, torch.stack(images), torch.tensor(labels))
    torch.save(cnn.state_dict(), root / "cnn.pt")

    import pandas as pd

    x, y = my_models.table_rows()
    frame = pd.DataFrame(x.numpy(), columns=[f"f{i}" for i in range(x.shape[1])])
    frame["y"] = y.numpy()
    frame.to_csv(root / "table.csv", index=False)
    mlp = my_models.mlp(6)
    _fit(mlp, x, y, steps=150)
    torch.save(mlp.state_dict(), root / "mlp.pt")
    return root
