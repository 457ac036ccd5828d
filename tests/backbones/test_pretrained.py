"""``BackboneConfig.pretrained``: the weights a training run starts its backbone from. Every test
writes its own weight files (random networks) into a temporary TORCH_HOME, Hugging Face cache or
folder; nothing is downloaded."""
import logging
import urllib.error
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

import codetr
from codetr.backbones import load_pretrained_backbone
from codetr.cli import main
from codetr.commands import build_run
from codetr.config import ConfigError, apply_overrides
from codetr.data.synth import write_synthetic_coco
from codetr.recipes import RECIPES, recipe

# dino_tiny's backbone at torchvision's ResNet-18 widths, so that torchvision weights fit
R18 = {"stem_channels": 64, "res2_channels": None}
TINY_SWIN = {"embed_dims": 32, "depths": (1, 1, 1, 1), "num_heads": (1, 2, 4, 8), "window_size": 4}
R18_V1 = torchvision.models.ResNet18_Weights.IMAGENET1K_V1


def tiny_detector(**backbone):
    return codetr.create("dino_tiny", num_classes=2, backbone={**R18, **backbone})


def random_resnet18() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return torchvision.models.resnet18().state_dict()


def assert_backbone_equals(module: torch.nn.Module, state: dict[str, torch.Tensor], skip: str = "fc.") -> None:
    own = module.state_dict()
    for key, value in state.items():
        if not key.startswith(skip) and not key.endswith("num_batches_tracked"):
            assert torch.equal(own[key], value), key


@pytest.fixture
def checkpoints(tmp_path, monkeypatch) -> Path:
    """An empty $TORCH_HOME/hub/checkpoints, torchvision's download cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    return folder


def test_build_run_starts_the_backbone_from_cached_torchvision_weights(tmp_path, checkpoints, caplog):
    state = random_resnet18()
    torch.save(state, checkpoints / Path(R18_V1.url).name)  # where torchvision's download would put it
    write_synthetic_coco(tmp_path / "data", num_train=2, num_val=1, image_size=64)
    cfg = apply_overrides(recipe("dino_tiny"), [f"data.path={tmp_path / 'data'}",
                                                "model_args.backbone.stem_channels=64",
                                                "model_args.backbone.res2_channels=null",
                                                "model_args.backbone.pretrained=torchvision"])
    with caplog.at_level(logging.INFO, logger="codetr"):
        model, _, _ = build_run(cfg)
    assert_backbone_equals(model.backbone.body, state)
    expected = len([k for k in state if not k.startswith("fc.") and not k.endswith("num_batches_tracked")])
    assert f"backbone: loaded {expected} tensors from ResNet18_Weights.IMAGENET1K_V1" in caplog.text
    # codetr.create never loads: the same model built directly keeps its random weights
    created = codetr.create("dino_tiny", num_classes=2, **cfg.model_args)
    assert not torch.equal(created.backbone.body.conv1.weight, state["conv1.weight"])


def test_pretrained_none_loads_nothing():
    model = tiny_detector()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert load_pretrained_backbone(model) is None
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def offline(url: str, dst: str, *args, **kwargs) -> None:
    """torch.hub's download without a network."""
    raise urllib.error.URLError("no network")


def test_missing_weights_without_network_name_the_url_and_the_folder(checkpoints, monkeypatch):
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(FileNotFoundError) as error:
        load_pretrained_backbone(tiny_detector(pretrained="IMAGENET1K_V1"))
    message = str(error.value)
    assert R18_V1.url in message and str(checkpoints) in message and "\n" not in message
    assert "model_args.backbone.pretrained=null" in message and "pretrained=/path/file.pth" in message


def test_the_cli_reports_missing_weights_in_one_line(tmp_path, checkpoints, monkeypatch, caplog):
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    write_synthetic_coco(tmp_path / "data", num_train=2, num_val=1, image_size=64)
    args = ["train", "dino_tiny", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--procs", "1",
            "--set", "model_args.backbone.pretrained=IMAGENET1K_V1"]
    assert main(args) == 2
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert R18_V1.url in line and "\n" not in line
    assert not (tmp_path / "run" / "last.ckpt").exists()


@pytest.mark.parametrize("name, message", [
    ("IMAGENET1K_V3", "not a weight of ResNet18_Weights (torchvision, IMAGENET1K_V1, DEFAULT)"),
    ("timm:swin_larg_patch4_window12_384.ms_in22k", "close names: swin_large_patch4_window12_384.ms_in22k"),
    ("timm:resnet18.no_such_tag", "is not a pretrained timm model"),
])
def test_unknown_names_are_refused_with_the_choices(name, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_pretrained_backbone(tiny_detector(pretrained=name))


def test_torchvision_names_are_for_resnets():
    model = codetr.create("dino_tiny", num_classes=2, backbone={"kind": "swin", "swin": TINY_SWIN,
                                                                "pretrained": "IMAGENET1K_V1"})
    with pytest.raises(ConfigError, match="torchvision weights are for ResNets; a swin takes 'timm:"):
        load_pretrained_backbone(model)


@pytest.mark.parametrize("suffix, wrap", [
    (".pth", lambda s: {"state_dict": {f"module.backbone.{k}": v for k, v in s.items()}, "epoch": 3}),
    (".pt", lambda s: {"model": {f"backbone.body.{k}": v for k, v in s.items()}}),
    (".safetensors", lambda s: s),
])
def test_local_files_load_out_of_wrappers_and_prefixes(tmp_path, suffix, wrap):
    state = random_resnet18()
    path = tmp_path / f"r18{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in wrap(state).items()}, path)
    else:
        torch.save(wrap(state), path)
    model = tiny_detector(pretrained=str(path))
    assert load_pretrained_backbone(model) == str(path)
    assert_backbone_equals(model.backbone.body, state)


def test_a_detectors_backbone_loads_and_other_parts_are_left_out(tmp_path):
    """A codetr checkpoint's state: its ``backbone.*`` keys are selected, the rest ignored."""
    source = tiny_detector()
    torch.save({"model": source.state_dict()}, tmp_path / "detector.pth")
    model = tiny_detector(pretrained=str(tmp_path / "detector.pth"))
    load_pretrained_backbone(model)
    assert_backbone_equals(model.backbone, source.backbone.state_dict())
    assert not torch.equal(model.input_proj[0][0].weight, source.input_proj[0][0].weight)


def test_timm_resnet_names_are_torchvision_names(tmp_path):
    torch.manual_seed(2)
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    torch.save(state, tmp_path / "timm_r18.pth")
    model = tiny_detector(pretrained=str(tmp_path / "timm_r18.pth"))
    load_pretrained_backbone(model)
    assert_backbone_equals(model.backbone.body, state)


def test_timm_weights_load_from_the_hugging_face_cache_offline(tmp_path, monkeypatch):
    """A ``timm:`` name goes through timm's own loading and the Hugging Face cache (written here
    as the hub lays it out); offline and absent, the error names the repo and the cache."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    model = tiny_detector(pretrained="timm:resnet18.a1_in1k")
    with pytest.raises(FileNotFoundError) as error:
        load_pretrained_backbone(model)
    message = str(error.value)
    assert "timm/resnet18.a1_in1k" in message and str(tmp_path / "hf") in message and "\n" not in message
    repo, commit = tmp_path / "hf" / "models--timm--resnet18.a1_in1k", "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    torch.manual_seed(3)
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, repo / "snapshots" / commit / "model.safetensors")
    assert load_pretrained_backbone(model) == "timm:resnet18.a1_in1k"
    assert_backbone_equals(model.backbone.body, state)


def test_timm_swin_weights_load_into_the_swin_backbone(tmp_path):
    """timm's classification Swin -> SwinBackbone: every weight but the classifier's, the
    per-stage output norms (which the classifier lacks) kept as built."""
    torch.manual_seed(4)
    swin = TINY_SWIN
    timm_swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, embed_dim=swin["embed_dims"],
                                  depths=swin["depths"], num_heads=swin["num_heads"],
                                  window_size=swin["window_size"], num_classes=10)
    state = timm_swin.state_dict()
    torch.save(state, tmp_path / "swin.pth")
    model = codetr.create("dino_tiny", num_classes=2, backbone={"kind": "swin", "swin": swin,
                                                                "pretrained": str(tmp_path / "swin.pth")})
    norms = {k: v.clone() for k, v in model.backbone.norms.state_dict().items()}
    load_pretrained_backbone(model)
    own = model.backbone.state_dict()
    loaded = [k for k in state if not k.startswith(("head.", "norm."))]
    assert loaded and all(torch.equal(own[k], state[k]) for k in loaded)
    assert all(torch.equal(v, norms[k]) for k, v in model.backbone.norms.state_dict().items())


def test_weights_that_do_not_fit_are_refused_naming_the_keys(tmp_path):
    state = random_resnet18()
    wrong = {**state, "layer2.0.conv1.weight": torch.zeros(128, 64, 1, 1)}
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match=r"layer2\.0\.conv1\.weight is \[128, 64, 1, 1\], the backbone's is "
                                         r"\[128, 64, 3, 3\]"):
        load_pretrained_backbone(tiny_detector(pretrained=str(tmp_path / "wrong.pth")))
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ValueError, match=r"0 keys missing, \d+ keys \(layer1\.2\.conv1\.weight, .*\) not in the "
                                         r"backbone"):
        load_pretrained_backbone(tiny_detector(pretrained=str(tmp_path / "r34.pth")))
    del state["layer4.1.bn2.running_var"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"1 keys \(layer4\.1\.bn2\.running_var\) missing"):
        load_pretrained_backbone(tiny_detector(pretrained=str(tmp_path / "partial.pth")))


def test_deformable_convs_keep_their_offsets_when_the_weights_lack_them(tmp_path):
    state = random_resnet18()
    torch.save(state, tmp_path / "r18.pth")
    model = tiny_detector(pretrained=str(tmp_path / "r18.pth"), dcn_layers=(0, 1, 0, 0))
    load_pretrained_backbone(model)
    assert torch.equal(model.backbone.body.layer2[1].conv2.weight, state["layer2.1.conv2.weight"])
    assert not model.backbone.body.layer2[1].conv2.conv_offset_mask.weight.any()


def test_bad_files_are_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file .*nothing.pth"):
        load_pretrained_backbone(tiny_detector(pretrained=str(tmp_path / "nothing.pth")))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"weights.bin' is not a .pth / .pt / .safetensors file"):
        load_pretrained_backbone(tiny_detector(pretrained=str(tmp_path / "weights.bin")))
    torch.save({"model": {"epoch": 3}}, tmp_path / "empty.pth")
    with pytest.raises(ValueError, match="holds no tensors"):
        load_pretrained_backbone(tiny_detector(pretrained=str(tmp_path / "empty.pth")))
    with pytest.raises(ValueError, match="BackboneConfig.pretrained must name weights"):
        tiny_detector(pretrained=" ")


def test_notes_on_batchnorm(tmp_path, caplog):
    torch.save(random_resnet18(), tmp_path / "r18.pth")
    with caplog.at_level(logging.INFO, logger="codetr"):
        load_pretrained_backbone(tiny_detector(pretrained=str(tmp_path / "r18.pth"), norm="bn"))
        assert "norm='bn' trains the pretrained BatchNorm statistics" in caplog.text
        caplog.clear()
        load_pretrained_backbone(tiny_detector(norm="frozen_bn", frozen_stages=1))
        assert "random weights with frozen BatchNorm and a frozen stem learn poorly" in caplog.text
        caplog.clear()
        load_pretrained_backbone(tiny_detector())  # the tiny recipes: trainable BN from scratch
        assert not caplog.text


# the backbone weights of every full-size recipe (tiny ones train from scratch)
RECIPE_WEIGHTS = {name: "IMAGENET1K_V1" for name in RECIPES if "tiny" not in name}
RECIPE_WEIGHTS.update({"co_dino_5scale_swin_l_1x": "timm:swin_large_patch4_window12_384.ms_in22k",
                       "co_dino_5scale_swin_l_lsj_3x": "timm:swin_large_patch4_window12_384.ms_in22k",
                       # MSRA R-50 (stride in the 1x1, caffe): no torchvision default
                       "defcn_poto_3dmf_aux_r50": None, "defcn_poto_r50": None, "fcos_r50": None})


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_weights(name):
    weights = recipe(name).model_args.get("backbone", {}).get("pretrained")
    assert weights == RECIPE_WEIGHTS.get(name)
    if weights and weights.startswith("timm:"):
        assert timm.models.get_pretrained_cfg(weights[len("timm:"):]).hf_hub_id
    elif weights:
        assert weights in torchvision.models.ResNet50_Weights.__members__
