"""Write scikit-learn's bundled digits as CSV tables and train an MLP teacher on them.

Nothing is downloaded: the digits ship with scikit-learn. The teacher is torchvision's
``torchvision.ops.MLP`` (64 inputs, two hidden layers, 10 classes). Then
``protege run examples/digits_table.yaml`` searches its students.

    python examples/make_digits_table.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torchvision.ops import MLP

HERE = Path(__file__).resolve().parent


def write_tables(out: Path, *, samples: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``out/train.csv`` and ``out/test.csv``: 64 pixel columns (0..1) and a ``digit``."""
    digits = load_digits(as_frame=True)
    frame = digits.frame.rename(columns={"target": "digit"}).head(samples)
    pixels = [c for c in frame.columns if c != "digit"]
    frame[pixels] = frame[pixels] / 16.0
    train, test = train_test_split(frame, test_size=0.2, random_state=0, stratify=frame["digit"])
    out.mkdir(parents=True, exist_ok=True)
    train.to_csv(out / "train.csv", index=False)
    test.to_csv(out / "test.csv", index=False)
    return train, test


def train_teacher(out: Path, train: pd.DataFrame, test: pd.DataFrame, *, epochs: int) -> float:
    torch.manual_seed(0)
    x = torch.tensor(train.drop(columns="digit").to_numpy(), dtype=torch.float32)
    y = torch.tensor(train["digit"].to_numpy())
    model = MLP(64, [64, 64, 10])
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(64):
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimiser.step()
    model.eval()
    x_test = torch.tensor(test.drop(columns="digit").to_numpy(), dtype=torch.float32)
    with torch.no_grad():
        accuracy = float((model(x_test).argmax(1) == torch.tensor(test["digit"].to_numpy()))
                         .float().mean())
    torch.save(model.state_dict(), out / "mlp.pt")
    return accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "digits")
    parser.add_argument("--samples", type=int, default=1797, help="rows kept (all: 1797)")
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    train, test = write_tables(args.out, samples=args.samples)
    accuracy = train_teacher(args.out, train, test, epochs=args.epochs)
    print(f"wrote {args.out / 'train.csv'}, {args.out / 'test.csv'} and {args.out / 'mlp.pt'} "
          f"(teacher test accuracy {accuracy:.3f})")


if __name__ == "__main__":
    main()
