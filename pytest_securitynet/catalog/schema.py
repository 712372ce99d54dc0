"""JSON schemas for catalog entries; every entry is validated when a catalog loads."""

from __future__ import annotations

_ID = {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]*$"}
_POS_INT = {"type": "integer", "minimum": 1}

ANNOTATIONS = {
    "type": "object",
    "additionalProperties": False,
    "required": ["topic_category", "training_set_size", "num_classes", "input_dims", "purpose"],
    "properties": {
        "task_type": {"type": "string"},
        "dataset": {"type": "string", "minLength": 1},
        "topic_category": {"type": "string"},
        "data_category": {"type": "string"},
        "class_granularity": {"enum": ["coarse", "fine"]},
        "training_set_size": _POS_INT,
        "num_classes": _POS_INT,
        "input_dims": {"type": "string", "pattern": "^[0-9]+(x[0-9]+){2,3}$"},
        "venue": {"type": "string"},
        "venue_type": {"type": "string"},
        "year": {"type": "integer", "minimum": 1980, "maximum": 2100},
        "num_authors": _POS_INT,
        "affiliation": {"type": "string"},
        "affiliation_type": {"enum": ["company", "research institution", "university", "mixed"]},
        "country": {"type": "string"},
        "purpose": {"enum": ["benchmark", "security"]},
        "listed_purpose": {"enum": ["benchmark", "security", "other"]},
        "paper": {"type": "string"},
        "training": {"type": "string", "minLength": 1},
        "threat_model": {"type": "string", "minLength": 1},
    },
}
"""The paper's codebook (Table 2). `dataset` is the dataset's name as the database writes it
(e.g. "CIFAR-10"); `data_category` the database's coarse category (natural, medical, digit);
`listed_purpose` the database's own purpose column, where `other` marks models published for
neither benchmarking nor security, which the paper counts as benchmark models (`purpose`).
Beyond the codebook, robust models say how they were trained (`training`: `standard`, or the
adversarial-training method, e.g. `pgd-at`, `trades`) and against what (`threat_model`: `Linf`,
`L2`, `corruptions`), as RobustBench records them."""

DATABASE_ROW = {
    "type": "object",
    "additionalProperties": False,
    "required": ["table", "row", "name"],
    "properties": {
        "table": {"enum": ["benchmark", "security"]},
        "row": _POS_INT,
        "name": {"type": "string", "minLength": 1},
        "weights": {"type": "string"},
    },
}
"""Where the SecurityNet database lists a model: its table, 1-based data row and model name."""

PREPROCESS = {
    "type": "object",
    "additionalProperties": False,
    "required": ["input_size", "mean", "std"],
    "properties": {
        "input_size": {"type": "array", "items": _POS_INT, "minItems": 3, "maxItems": 4},
        "mean": {"type": "array", "items": {"type": "number"}, "minItems": 1},
        "std": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}, "minItems": 1},
    },
}

TRAIN = {
    "type": "object",
    "additionalProperties": False,
    "required": ["epochs", "lr"],
    "properties": {
        "epochs": _POS_INT,
        "lr": {"type": "number", "exclusiveMinimum": 0},
        "weight_decay": {"type": "number", "minimum": 0},
        "batch_size": {"type": "integer", "minimum": 0},
        "seed": {"type": "integer", "minimum": 0},
        "width_factor": {"type": "number", "exclusiveMinimum": 0},
        "adversarial_eps": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "adversarial_steps": _POS_INT,
    },
}
"""How a `demo` model is trained (`zoo.demo.train_demo`): Adam for `epochs` at `lr`; `batch_size` 0
is the whole training set; `width_factor` sets the RBF kernel width (needed by `demo_rbf`);
`adversarial_eps` trains on L-inf PGD examples of that radius instead of the clean batch
(Madry et al.'s adversarial training, `adversarial_steps` steps, default 5)."""

MODEL = {
    "type": "object",
    "additionalProperties": False,
    "required": ["id", "dataset", "architecture", "model_type", "source", "preprocess", "annotations"],
    "properties": {
        "id": _ID,
        "dataset": _ID,
        "architecture": {"type": "string", "minLength": 1},
        "model_type": {"type": "string", "minLength": 1},
        "source": {
            "type": "string",
            "pattern": "^(pytorchcv:[A-Za-z0-9_.-]+|timm:[A-Za-z0-9_./-]+|torchvision:[A-Za-z0-9_]+:[A-Za-z0-9_.]+"
            "|https?://\\S+|file:\\S+|package:[A-Za-z_][A-Za-z0-9_]*/[A-Za-z0-9_./-]+"
            "|robustbench:[a-z0-9]+/[A-Za-z0-9]+/[A-Za-z0-9_.+-]+|demo)$",
        },
        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "robustbench": {"type": "object"},  # RobustBench's reported numbers (model_info), for comparison
        "builder": {"type": "string", "minLength": 1},
        "builder_args": {"type": "object"},
        "checkpoint": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "state_dict_key": {"type": "string"},
                "strip_prefix": {"type": "string"},
                "only_prefixed": {"type": "boolean"},
            },
        },
        "train": TRAIN,
        "members_file": {"type": "string", "minLength": 1},
        "tags": {"type": "array", "items": _ID},
        "preprocess": PREPROCESS,
        "annotations": ANNOTATIONS,
        "database": DATABASE_ROW,
        "unavailable": {"type": "string", "minLength": 1},
    },
    "allOf": [
        {"if": {"properties": {"source": {"pattern": "^https?://"}}, "not": {"required": ["unavailable"]}},
         "then": {"required": ["sha256", "builder"]}},
        {"if": {"properties": {"source": {"pattern": "^(file:|demo$)"}}},
         "then": {"required": ["builder"]}},
        {"if": {"properties": {"source": {"const": "demo"}}},
         "then": {"required": ["train"]}},
        {"if": {"properties": {"builder": {"const": "demo_rbf"}}, "required": ["builder", "train"]},
         "then": {"properties": {"train": {"required": ["width_factor"]}}}},
    ],
}

DATASET = {
    "type": "object",
    "additionalProperties": False,
    "required": ["source", "num_classes", "input_size", "train_size", "test_size"],
    "properties": {
        "source": {"enum": ["torchvision", "image-folder-archive", "sklearn-digits", "medmnist", "image-folder"]},
        "flag": {"type": "string"},
        "folder": {"type": "string"},
        "layout": {"enum": ["cub200", "train-val"]},
        "resize": _POS_INT,
        "max_train": _POS_INT,
        "max_test": _POS_INT,
        "variant_of": _ID,
        "torchvision_class": {"type": "string"},
        "file": {"type": "string"},
        "url": {"type": "string"},
        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "archive_root": {"type": "string"},
        "num_classes": _POS_INT,
        "class_names": {"type": "array", "items": {"type": "string"}},
        "input_size": {"type": "array", "items": _POS_INT, "minItems": 3, "maxItems": 4},
        "train_size": _POS_INT,
        "test_size": _POS_INT,
        "test_fraction": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "split_seed": {"type": "integer"},
        "topic_category": {"type": "string"},
        "description": {"type": "string"},
    },
    "allOf": [
        {"if": {"properties": {"source": {"const": "image-folder-archive"}}},
         "then": {"required": ["file", "sha256", "archive_root"]}},
        {"if": {"properties": {"source": {"const": "torchvision"}}},
         "then": {"required": ["torchvision_class"]}},
        {"if": {"properties": {"source": {"const": "medmnist"}}},
         "then": {"required": ["flag"]}},
        {"if": {"properties": {"source": {"const": "image-folder"}}},
         "then": {"required": ["folder", "layout"]}},
    ],
}
