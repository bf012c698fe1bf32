"""Measure tiny-var through edgegen itself: class-conditional accuracy of generated digits, judged
by a logistic regression trained on the real digits (scikit-learn's bundled set), per runtime and
guidance scale; writes a grid of samples (one row per class) for looking at.

    python examples/tiny_var_eval.py [MODEL] --per-class 50 --grid samples.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_var_data import image_to_digit_features, train_classifier  # noqa: E402


def accuracy(model, classifier, per_class: int, cfg: float, seed: int, **sampling) -> tuple[float, np.ndarray]:
    result = model.generate(list(range(model.num_classes)), n=per_class, cfg=cfg, seed=seed, **sampling)
    predicted = classifier.predict(image_to_digit_features(result.images / 255.0))
    return float((predicted == np.asarray(result.class_ids)).mean()), result.images


def main() -> None:
    import edgegen
    from edgegen.images import grid, save_png

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="tiny-var")
    parser.add_argument("--runtime", default=None)
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--cfgs", default="0,1,2,4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", type=Path, default=None, help="write 10 samples per class (cfg 4) here")
    args = parser.parse_args()
    classifier, held_out = train_classifier(args.seed)
    model = edgegen.load(args.model, runtime=args.runtime)
    report = {"model": args.model, "runtime": model.manifest.runtime, "classifier_held_out_accuracy": held_out,
              "per_class": args.per_class, "accuracy_by_cfg": {}}
    for cfg in (float(c) for c in args.cfgs.split(",")):
        report["accuracy_by_cfg"][cfg], _ = accuracy(model, classifier, args.per_class, cfg, args.seed)
        print(f"cfg {cfg:g}: {report['accuracy_by_cfg'][cfg]:.3f}", file=sys.stderr, flush=True)
    if args.grid:
        result = model.generate(list(range(model.num_classes)), n=10, cfg=4.0, seed=args.seed)
        save_png(grid(result.images, columns=10), args.grid, "tiny-var samples, one row per class, cfg 4")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
