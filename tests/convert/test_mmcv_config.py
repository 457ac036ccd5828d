"""Reading mmcv 1.x config text without executing it."""
import os
from pathlib import Path

import pytest

from codetr.convert.mmcv_config import load_config_file, load_config_text
from tests.conftest import golden

CONFIGS = Path(__file__).parent / "data" / "co_detr_configs"   # copied from Sense-X/Co-DETR (MIT)
FIXTURES = ["co_dino_5scale_r50w16", "co_deformable_detr_r50w16"]


def _strict_equal(a, b) -> bool:
    """== that also tells int from float and bool, and keeps key order."""
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_strict_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_strict_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _differing_paths(a, b, prefix=""):
    """Dotted paths where two parsed configs differ (a key present in one only counts)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = set()
        for k in a.keys() | b.keys():
            out |= _differing_paths(a.get(k), b.get(k), f"{prefix}{k}.") if k in a and k in b else {prefix + k}
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return set().union(*(_differing_paths(x, y, f"{prefix}{i}.") for i, (x, y) in enumerate(zip(a, b))))
    return set() if _strict_equal(a, b) else {prefix.rstrip(".")}


@pytest.mark.parametrize("name", FIXTURES)
def test_pretty_text_gives_the_fixture_dict(name):
    common = golden(f"co_detr/{name}_inputs.pt")["common"]
    assert _strict_equal(load_config_text(common["config_pretty_text"]), common["config"])


def test_checkpoint_meta_config_text_parses():
    ckpt = golden("co_detr/co_dino_5scale_r50w16_checkpoint.pt")
    config = load_config_text(ckpt["meta"]["config"])
    assert config["model"]["query_head"]["type"] == "CoDINOHead"
    assert config["model"]["query_head"]["dn_cfg"]["group_cfg"]["num_dn_queries"] == 100


def test_official_file_with_bases_matches_the_fixture_up_to_the_shrink():
    """The official r50 file, merged over its two _base_ files, equals the fixture's mmcv-built
    config (key order included) everywhere except the overrides the fixture README lists."""
    parsed = load_config_file(CONFIGS / "co_dino" / "co_dino_5scale_r50_1x_coco.py")
    fixture = golden("co_detr/co_dino_5scale_r50w16_inputs.pt")["common"]["config"]
    qh, tr = "model.query_head", "model.query_head.transformer"
    shrink = {
        "num_dec_layer", "model.backbone.base_channels", "model.backbone.init_cfg",
        *(f"model.neck.in_channels.{i}" for i in range(4)), "model.neck.out_channels",
        f"{qh}.num_query", f"{qh}.num_classes", f"{qh}.in_channels", f"{qh}.positional_encoding.num_feats",
        f"{tr}.encoder.num_layers", f"{tr}.encoder.with_cp", f"{tr}.decoder.num_layers",
        f"{tr}.encoder.transformerlayers.attn_cfgs.embed_dims",
        f"{tr}.encoder.transformerlayers.feedforward_channels", f"{tr}.encoder.transformerlayers.ffn_cfgs",
        f"{tr}.decoder.transformerlayers.attn_cfgs.0.embed_dims",
        f"{tr}.decoder.transformerlayers.attn_cfgs.1.embed_dims",
        f"{tr}.decoder.transformerlayers.feedforward_channels", f"{tr}.decoder.transformerlayers.ffn_cfgs",
        "model.rpn_head.in_channels", "model.rpn_head.feat_channels",
        "model.rpn_head.loss_cls.loss_weight", "model.rpn_head.loss_bbox.loss_weight",
        "model.roi_head.0.bbox_roi_extractor.out_channels", "model.roi_head.0.bbox_head.in_channels",
        "model.roi_head.0.bbox_head.fc_out_channels", "model.roi_head.0.bbox_head.num_classes",
        "model.roi_head.0.bbox_head.loss_cls.loss_weight", "model.roi_head.0.bbox_head.loss_bbox.loss_weight",
        "model.bbox_head.0.in_channels", "model.bbox_head.0.feat_channels", "model.bbox_head.0.num_classes",
        "model.bbox_head.0.loss_cls.loss_weight", "model.bbox_head.0.loss_bbox.loss_weight",
        "model.bbox_head.0.loss_centerness.loss_weight",
        *(f"{p}.1.img_scale.{i}" for p in ("test_pipeline", "data.val.pipeline", "data.test.pipeline")
          for i in range(2)),
    }
    assert list(parsed) == list(fixture)
    assert _differing_paths(parsed, fixture) == shrink
    assert parsed["model"]["rpn_head"]["loss_cls"]["loss_weight"] == 1.0 * 6 * 2.0
    assert parsed["auto_scale_lr"] == {"enable": False, "base_batch_size": 16}   # child over base


def test_official_lsj_config_inherits_and_overrides():
    lsj = load_config_file(CONFIGS / "co_dino" / "co_dino_5scale_lsj_r50_1x_coco.py")
    assert lsj["model"]["with_attn_mask"] is False
    assert lsj["model"]["backbone"]["depth"] == 50                        # from the base
    train = lsj["data"]["train"]
    assert train["type"] == "MultiImageMixDataset"                        # child key
    assert train["ann_file"] == "data/coco/annotations/instances_train2017.json"  # kept from the base
    assert train["dataset"]["ann_file"] == "data/coco/annotations/instances_train2017.json"  # str +
    normalize = lsj["test_pipeline"][1]["transforms"][3]
    assert normalize == {"type": "Normalize", "mean": [123.675, 116.28, 103.53],
                         "std": [58.395, 57.12, 57.375], "to_rgb": True}   # dict(..., **img_norm_cfg)


@pytest.mark.skipif(not os.environ.get("CODETR_CO_DETR_REPO"),
                    reason="set CODETR_CO_DETR_REPO to a Sense-X/Co-DETR checkout to parse all its configs")
def test_every_official_config_parses():
    files = sorted(Path(os.environ["CODETR_CO_DETR_REPO"], "projects", "configs").rglob("*.py"))
    assert files
    for path in files:
        assert isinstance(load_config_file(path), dict), path


def test_data_subset():
    text = '''"""docstring"""
num_dec_layer = 6
lambda_2 = 2.0
norm = dict(mean=[1, 2], to_rgb=True)
blocks = list(range(0, 3)) + list(range(4, 6))
model = dict(
    w=1.0*num_dec_layer*lambda_2, neg=-1, ratio=4*2/3, floor=7 // 2, name='a' + 'b',
    pipe=[dict(type='N', **norm), {'backbone': dict(lr_mult=0.1), **norm}],
    sizes=((1, 2), [3]), mean0=norm['mean'][0], t=tuple([1, 2]), none=None)
__private = 1
'''
    cfg = load_config_text(text)
    assert list(cfg) == ["num_dec_layer", "lambda_2", "norm", "blocks", "model"]
    assert cfg["blocks"] == [0, 1, 2, 4, 5]
    assert _strict_equal(cfg["model"], {
        "w": 12.0, "neg": -1, "ratio": 4 * 2 / 3, "floor": 3, "name": "ab",
        "pipe": [{"type": "N", "mean": [1, 2], "to_rgb": True},
                 {"backbone": {"lr_mult": 0.1}, "mean": [1, 2], "to_rgb": True}],
        "sizes": [[1, 2], [3]], "mean0": 1, "t": [1, 2], "none": None})


@pytest.mark.parametrize("text, construct", [
    ("import os", "line 1: import"),
    ("from os import system", "line 1: import"),
    ("x = 1\ny = __import__('os').system('touch {marker}')", "line 2: call of \"__import__('os').system\""),
    ("y = __import__('os')", "line 1: call of '__import__'"),
    ("y = open('{marker}', 'w')", "line 1: call of 'open'"),
    ("y = exec('open(\"{marker}\", \"w\")')", "line 1: call of 'exec'"),
    ("y = eval('1')", "line 1: call of 'eval'"),
    ("y = dict(a=1).keys()", "line 1: call of 'dict(a=1).keys'"),
    ("y = 'a'.join", "line 1: attribute access"),
    ("y = (lambda: open('{marker}', 'w'))()", "line 1: call of"),
    ("y = lambda: 1", "line 1: lambda"),
    ("y = [i for i in range(3)]", "line 1: list comprehension"),
    ("y = __builtins__", "line 1: dunder name '__builtins__'"),
    ("y = undefined_name", "line 1: name 'undefined_name'"),
    ("y = {{_base_.model}}", "line 1: set display"),
    ("y = f'{{1}}'", "line 1: f-string"),
    ("y = 2 ** 10", "line 1: operator Pow"),
    ("y = 'a' * 3", "line 1: operator Mult"),
    ("def f():\n    pass", "line 1: function definition"),
    ("open('{marker}', 'w')", "line 1: call of 'open'"),
    ("x = 1\nif x:\n    y = 2", "line 2: If statement"),
    ("dict = 1", "line 1: assignment to 'dict'"),
    ("a, b = 1, 2", "line 1: assignment to anything but one plain name"),
    ("y = range(10**9)", "line 1: operator Pow"),
    ("y = list(range(10000000))", "line 1: range of 10000000 items"),
])
def test_code_is_refused_and_never_run(tmp_path, text, construct):
    marker = tmp_path / "side_effect"
    with pytest.raises(ValueError, match="not allowed in a config") as err:
        load_config_text(text.format(marker=marker), filename="cfg.py")
    assert f"cfg.py, {construct}" in str(err.value)
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_doubling_loop_is_bounded():
    text = "a = [0]\n" + "a = a + a\n" * 40
    with pytest.raises(ValueError, match="line 21: a value of 1048576 items"):
        load_config_text(text)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_merge_and_delete(tmp_path):
    _write(tmp_path / "bases" / "model.py", "model = dict(a=1, sub=dict(x=1, y=2), opt=dict(lr=1, m=0.9))\n")
    _write(tmp_path / "bases" / "data.py", "data = dict(n=2)\nshared = [1]\n")
    child = _write(tmp_path / "exp" / "child.py", """_base_ = ['../bases/model.py', '../bases/data.py']
model = dict(sub=dict(y=3, z=4), opt=dict(_delete_=True, lr=2), new=dict(_delete_=True, k=1))
shared = [2]
""")
    cfg = load_config_file(child)
    assert _strict_equal(cfg, {
        "model": {"a": 1, "sub": {"x": 1, "y": 3, "z": 4}, "opt": {"lr": 2}, "new": {"k": 1}},
        "data": {"n": 2}, "shared": [2]})
    assert load_config_text(child.read_text(), filename=child) == cfg


def test_base_as_single_string_and_chained(tmp_path):
    _write(tmp_path / "a.py", "x = dict(v=1, w=1)\n")
    _write(tmp_path / "b.py", "_base_ = 'a.py'\nx = dict(w=2)\n")
    assert load_config_file(_write(tmp_path / "c.py", "_base_ = './b.py'\ny = 3\n")) == {
        "x": {"v": 1, "w": 2}, "y": 3}


@pytest.mark.parametrize("files, match", [
    ({"a.py": "x = 1\n", "b.py": "x = 2\n", "c.py": "_base_ = ['a.py', 'b.py']\n"},
     "redefines keys of an earlier base: x"),
    ({"a.py": "_base_ = 'c.py'\n", "c.py": "_base_ = 'a.py'\n"}, "includes itself"),
    ({"c.py": "_base_ = 'missing.py'\n"}, "not found"),
    ({"a.py": "x = [1]\n", "c.py": "_base_ = 'a.py'\nx = dict(k=1)\n"}, "cannot be merged into the base's list"),
    ({"a.py": "import os\n", "c.py": "_base_ = 'a.py'\n"}, r"a\.py, line 1: import"),
])
def test_bad_bases_are_refused(tmp_path, files, match):
    for name, text in files.items():
        _write(tmp_path / name, text)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        load_config_file(tmp_path / "c.py")


def test_base_needs_a_filename():
    with pytest.raises(ValueError, match="pass filename="):
        load_config_text("_base_ = 'a.py'\n")


def test_syntax_error_is_a_value_error():
    with pytest.raises(ValueError, match=r"<config text>, line 1: not valid Python"):
        load_config_text("x = dict(\n")
