import json

import pytest

from codetr.config import ConfigError, DataConfig, RunConfig, TrainConfig, apply_overrides, load_config, parse_value


def test_round_trip_through_json():
    cfg = RunConfig(model="dino_r50", model_args={"num_queries": 900, "nested": {"a": [1, 2]}},
                    data=DataConfig(path="/data/coco", train_scales=[96, 128]),
                    train=TrainConfig(epochs=12, amp="bf16", max_iters=100, lr_drop=None))
    d = json.loads(json.dumps(cfg.to_dict()))
    assert RunConfig.from_dict(d) == cfg
    assert RunConfig.from_dict({}) == RunConfig()


def test_overrides_parse_and_type_check():
    cfg = apply_overrides(RunConfig(), ["train.epochs=24", "train.lr_multipliers.backbone=0.2",
                                        "data.train_scales=[96,128]", "model=dino_r50", "train.lr=1",
                                        "train.max_iters=null", "train.lr_drop=None", "model_args.x.y=3",
                                        "train.find_unused_parameters=true", "data.path=/a b/c"])
    assert cfg.train.epochs == 24 and cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.lr_multipliers == {"backbone": 0.2, "sampling_offsets": 0.1, "reference_points": 0.1}
    assert cfg.data.train_scales == [96, 128] and cfg.model == "dino_r50"
    assert cfg.train.lr_drop is None and cfg.model_args == {"x": {"y": 3}}
    assert cfg.train.find_unused_parameters is True and cfg.data.path == "/a b/c"
    assert RunConfig().train.epochs == 50  # the input is not modified


@pytest.mark.parametrize("override, words", [
    ("train.epoch=3", ["'train.epoch'", "did you mean 'train.epochs'"]),
    ("trian.epochs=3", ["'trian'"]),
    ("train.epochs=abc", ["'train.epochs'", "int"]),
    ("train.epochs=2.5", ["'train.epochs'", "int"]),
    ("train.epochs=true", ["'train.epochs'"]),
    ("train.lr_multipliers.backbone=x", ["'train.lr_multipliers.backbone'", "float"]),
    ("data.train_scales=[1.5]", ["'data.train_scales[0]'"]),
    ("train.amp=fp8", ["'train.amp'", "'bf16'"]),
    ("model.name=x", ["'model'"]),
    ("train.epochs", ["key=value"]),
])
def test_bad_overrides_name_the_key(override, words):
    with pytest.raises(ConfigError) as err:
        apply_overrides(RunConfig(), [override])
    for word in words:
        assert word in str(err.value)


def test_from_dict_drops_the_preprocessing_keys_of_older_runs():
    """Runs saved before preprocessing moved to the model's InputSpec still load (and resume)."""
    old = RunConfig(data=DataConfig(path="/coco")).to_dict()
    old["data"].update(mean=[0.5, 0.5, 0.5], std=[0.2, 0.2, 0.2], eval_min_size=128, eval_max_size=170, square=False)
    with pytest.warns(UserWarning, match="data.eval_max_size, data.eval_min_size, data.mean, data.square, data.std"):
        assert RunConfig.from_dict(old) == RunConfig(data=DataConfig(path="/coco"))


def test_from_dict_rejects_unknown_and_mistyped():
    with pytest.raises(ConfigError, match="'train.epochz'"):
        RunConfig.from_dict({"train": {"epochz": 1}})
    with pytest.raises(ConfigError, match="'data.num_workers'"):
        RunConfig.from_dict({"data": {"num_workers": "2"}})


def test_parse_value():
    assert parse_value("[96, 128]") == [96, 128]
    assert parse_value("1e-4") == 1e-4
    assert parse_value("false") is False
    assert parse_value("dino_r50") == "dino_r50"
    assert parse_value("{'a': 1}") == {"a": 1}


def test_data_paths():
    coco = DataConfig(path="/coco")
    assert [str(p) for p in coco.split_paths("val")] == ["/coco/annotations/instances_val.json", "/coco/val"]
    explicit = DataConfig(root="/r", train_ann="a.json", train_images="/abs/imgs")
    assert [str(p) for p in explicit.split_paths("train")] == ["/r/a.json", "/abs/imgs"]
    with pytest.raises(ConfigError, match="data.path"):
        DataConfig().split_paths("train")


def test_load_config(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"model": "m", "train": {"epochs": 3}}))
    cfg = load_config(path, ["train.batch_size=4"])
    assert cfg.model == "m" and cfg.train.epochs == 3 and cfg.train.batch_size == 4
