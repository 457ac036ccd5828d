"""``codetr convert co_detr`` without --config (the mmcv text in the checkpoint's meta) writes a
codetr checkpoint that ``codetr.load`` rebuilds (CoDETRConfig round trip) with the official
outputs."""
import torch

import codetr
from codetr.cli import main
from tests.conftest import GOLDEN_DIRS, golden

NAME = "co_deformable_detr_r50w16"


def test_cli_convert_and_load_round_trip(tmp_path):
    inputs, ev = golden(f"co_detr/{NAME}_inputs.pt"), golden(f"co_detr/{NAME}_eval.pt")["eval"]
    source = next(d / "co_detr" / f"{NAME}_checkpoint.pt" for d in GOLDEN_DIRS
                  if (d / "co_detr" / f"{NAME}_checkpoint.pt").is_file())
    assert main(["convert", "co_detr", str(source), str(tmp_path / "co_def.ckpt")]) == 0
    model = codetr.load(tmp_path / "co_def.ckpt").eval()
    assert model.family == "co_detr" and model.config.variant == "deformable"
    x = inputs["inputs"]
    sizes = torch.tensor([m["img_shape"][:2] for m in x["img_metas"]])
    with torch.no_grad():
        out = model(x["img"], sizes)
    torch.testing.assert_close(out["all_cls_scores"], ev["query_head"]["all_cls_scores"], rtol=0, atol=1e-4)
