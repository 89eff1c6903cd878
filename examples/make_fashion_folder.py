"""Write a few hundred Fashion-MNIST images as an image folder and train a resnet18 teacher.

Nothing is downloaded: the images come from Debian's ``dataset-fashion-mnist`` package
(``apt-get install dataset-fashion-mnist``), read by torchvision's ``FashionMNIST``; the
teacher is torchvision's ``resnet18(num_classes=10)``, trained here from scratch for a few
epochs on CPU. Then ``protege run examples/fashion_folder.yaml`` searches its students.

    python examples/make_fashion_folder.py            # 30 images per class, 8 epochs
    python examples/make_fashion_folder.py --per-class 4 --epochs 1    # the size of its test
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import tempfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets, models, transforms

IDX_DIR = Path("/usr/share/datasets/fashion-mnist")
HERE = Path(__file__).resolve().parent
# Mean and standard deviation of Fashion-MNIST pixels; fashion_folder.yaml normalises with them.
MEAN, STD = 0.2860, 0.3530


def fashion_mnist(root: Path, *, train: bool) -> datasets.FashionMNIST:
    """torchvision's FashionMNIST on Debian's IDX files (gunzipped where torchvision looks)."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for packed in IDX_DIR.glob("*-ubyte.gz"):
        target = raw / packed.name.removesuffix(".gz")
        if not target.exists():
            with gzip.open(packed) as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out)
    return datasets.FashionMNIST(str(root), train=train, download=False)


def write_folder(out: Path, *, per_class: int) -> None:
    """``out/images/{train,val,test}/<class>/<n>.png``: per_class training images per class,
    a quarter of that for validation and for test."""
    with tempfile.TemporaryDirectory() as tmp:
        train, test = fashion_mnist(Path(tmp), train=True), fashion_mnist(Path(tmp), train=False)
        wanted = {"train": (train, 0, per_class), "val": (train, per_class, per_class // 4),
                  "test": (test, 0, per_class // 4)}
        for split, (data, skip, count) in wanted.items():
            seen = dict.fromkeys(range(10), 0)
            for index in range(len(data)):
                image, label = data[index]
                seen[label] += 1
                if skip < seen[label] <= skip + count:
                    folder = out / "images" / split / data.classes[label].replace("/", "-")
                    folder.mkdir(parents=True, exist_ok=True)
                    image.save(folder / f"{index}.png")
                if all(n >= skip + count for n in seen.values()):
                    break


def train_teacher(out: Path, *, epochs: int, seed: int = 0) -> float:
    """Train resnet18(num_classes=10) on the folder with the config's transforms; save it."""
    torch.manual_seed(seed)
    transform = transforms.Compose([
        transforms.Resize(32), transforms.ToTensor(),
        transforms.Normalize([MEAN] * 3, [STD] * 3)])
    train = datasets.ImageFolder(str(out / "images" / "train"), transform=transform)
    val = datasets.ImageFolder(str(out / "images" / "val"), transform=transform)
    model = models.resnet18(num_classes=10)
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3)
    loader = DataLoader(train, batch_size=32, shuffle=True)
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimiser.step()
    model.eval()
    with torch.no_grad():
        hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in DataLoader(val, 64))
    torch.save(model.state_dict(), out / "resnet18.pt")
    return hits / len(val)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "fashion")
    parser.add_argument("--per-class", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    write_folder(args.out, per_class=args.per_class)
    accuracy = train_teacher(args.out, epochs=args.epochs)
    print(f"wrote {args.out / 'images'} and {args.out / 'resnet18.pt'} "
          f"(teacher val accuracy {accuracy:.3f})")


if __name__ == "__main__":
    main()
