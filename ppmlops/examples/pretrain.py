"""Pretrain on a public half, fine-tune with DP on the private half: the files
dags/pipelines/demo_finetune.yaml reads.

    python -m ppmlops.examples.pretrain [--data DIR] [--out DIR]
        (defaults: $PPMLOPS_DATA/adult and $PPMLOPS_HOME/demo)

UCI Adult's train.csv is split in two by each row's position (even rows, odd rows). The even half
plays the public data an organisation may learn from without DP (a published census extract,
another country's data): the Adult MLP is trained on it without clipping or noise and its weights
are saved as a state dict (adult_pretrained.pt). The odd half is written as adult_private.csv:
the pipeline's source, on which DP-SGD fine-tunes only the last layer (model.trainable) starting
from those weights (model.init). DP fine-tuning of a model pretrained on public data is the most
effective DP practice known; here it needs far fewer noisy steps than training from scratch.

Both files are written atomically and left alone when they exist.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ppmlops.atomic_file import replace_with, write_csv
SPEC = Path(__file__).resolve().parents[2] / "dags" / "pipelines" / "demo_finetune.yaml"
PRIVATE, WEIGHTS = "adult_private.csv", "adult_pretrained.pt"
EPOCHS, BATCH, LEARNING_RATE = 8, 256, 0.2


def write_halves(data_dir: Path, out_dir: Path, spec_path: Path = SPEC) -> tuple[Path, Path]:
    """(the private half's CSV, the pretrained weights), written unless they exist."""
    import pandas as pd
    import torch
    import torch.nn.functional as F

    from ppmlops.data.features import encode
    from ppmlops.spec import load_spec
    from ppmlops.training.models import build_model

    out_dir.mkdir(parents=True, exist_ok=True)
    private, weights = out_dir / PRIVATE, out_dir / WEIGHTS
    rows = pd.read_csv(data_dir / "train.csv")
    if not private.exists():
        write_csv(private, rows.iloc[1::2])
    if not weights.exists():
        spec = load_spec(spec_path)
        public = rows.iloc[0::2]
        X, y, _ = encode(public[public[spec.dataset.label.column].isin(spec.dataset.label.values)], spec)
        torch.manual_seed(0)
        net = build_model(spec.model.kind, X.shape[1], list(spec.model.hidden or ()))
        opt = torch.optim.SGD(net.parameters(), lr=LEARNING_RATE)
        Xs, ys = torch.from_numpy(X), torch.from_numpy(y)
        g = torch.Generator().manual_seed(0)
        for _ in range(EPOCHS):
            for idx in torch.randperm(len(Xs), generator=g).split(BATCH):
                opt.zero_grad()
                F.cross_entropy(net(Xs[idx]), ys[idx]).backward()
                opt.step()
        state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        replace_with(weights, lambda tmp: torch.save(state, tmp))
    return private, weights


def main(argv: list[str] | None = None) -> int:
    from ppmlops import settings

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="the folder holding Adult's train.csv")
    ap.add_argument("--out", type=Path, default=None, help="where to write the two files")
    args = ap.parse_args(argv)
    data = args.data or Path(os.environ.get("PPMLOPS_DATA", "")) / "adult"
    if not (data / "train.csv").exists():
        print(f"{data / 'train.csv'} not found: set PPMLOPS_DATA (the folder holding adult/) or pass --data",
              file=sys.stderr)
        return 2
    private, weights = write_halves(data, args.out or settings.load().home / "demo")
    print(f"private half: {private}\npretrained weights: {weights}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
