"""The reference-attack known answer on variants of the overfit demo model (docs/membership-inference.md).

Each argument is a JSON object: overrides of `demo-digits-rbf-overfit`'s `train` settings, plus
`attack_seed` (default 0), `lira_global_variance` (default true) and `logit_scale` (the RBF
network's logits multiplied by it; default 1). Per recipe it prints the share of members and of
non-members whose true-class posterior is exactly 1.0, the best paper attack's TPR at 1% FPR,
RMIA's and LiRA's, and modified-entropy and RMIA AUC. Run from the repository root:

    OMP_NUM_THREADS=1 python3 tests/membership_recipes.py '{}' '{"width_factor": 0.45, "lira_global_variance": false}'

Models and reference models are cached under /tmp/securitynet-recipes, one directory per logit scale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

import test_membership_known_answers as known  # noqa: E402
from pytest_securitynet.harness.harness import Harness  # noqa: E402
from pytest_securitynet.harness.settings import Settings  # noqa: E402
from pytest_securitynet.zoo.architectures import RBFNet  # noqa: E402


def measure(recipe: dict) -> dict:
    recipe = dict(recipe)
    seed = int(recipe.pop("attack_seed", 0))
    global_variance = bool(recipe.pop("lira_global_variance", True))
    scale = float(recipe.pop("logit_scale", 1.0))
    unscaled = RBFNet.forward
    if scale != 1.0:
        RBFNet.forward = lambda self, x: scale * unscaled(self, x)
    try:
        harness = Harness(Settings(cache_dir=Path(f"/tmp/securitynet-recipes/scale-{scale}")), lambda: torch.device("cpu"))
        entry = harness.catalog.model(known.OVERFIT)
        entry.raw["train"].update(recipe)  # the recipe is part of the demo cache key: its own model
        loaded = harness.loaded(entry)
        members, nonmembers = loaded.sets["members"], loaded.sets["nonmembers"]
        saturated = []
        for part in (members, nonmembers):
            p = loaded.posteriors.get(part)
            saturated.append(round((p[torch.arange(len(p)), part.labels] == 1).float().mean().item(), 3))
        r = known.attack_with_references(harness, loaded, members, nonmembers, seed=seed,
                                         lira_global_variance=global_variance)
    finally:
        RBFNet.forward = unscaled
    best_tpr, best = max((r[a]["tpr_at_fpr_1e-2"], a) for a in known.ATTACKS)
    return {"saturated_members_nonmembers": saturated, "best_paper": best, "best_paper_tpr": round(best_tpr, 3),
            "rmia_tpr": round(r["rmia-offline"]["tpr_at_fpr_1e-2"], 3),
            "lira_tpr": round(r["lira-offline"]["tpr_at_fpr_1e-2"], 3),
            "mentropy_auc": round(r["mentropy-global"]["auc"], 3), "rmia_auc": round(r["rmia-offline"]["auc"], 3)}


if __name__ == "__main__":
    torch.set_num_threads(1)
    for argument in sys.argv[1:] or ["{}"]:
        print(argument, json.dumps(measure(json.loads(argument))), flush=True)
