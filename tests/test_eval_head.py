"""``evaluate(..., head=k)`` scores stage k's head alone, against the stages and head run by hand;
``bn_init_images`` on a model without BatchNorm says that nothing was initialised."""
import pytest
import torch
import torch.nn.functional as F

import sparsecascade as sc
from sparsecascade.bn_init import init_batchnorm_from_data
from sparsecascade.evaluate import evaluate
from sparsecascade.metrics import ConfusionMatrix


def _tiny_model():
    torch.manual_seed(0)
    stages = [torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU()),
              torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU()),
              torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU())]
    return sc.LayerCascade(stages, num_classes=4, stage_channels=[8, 8, 8], head_channels=8, rho=0.5).eval()


@pytest.mark.parametrize("head", [1, 2, 3])
def test_head_k_scores_stage_k_alone(head):
    model = _tiny_model()
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(1, 3, 12, 10, generator=g), torch.randint(0, 4, (1, 12, 10), generator=g)) for _ in range(3)]
    before = model(data[0][0]).logits
    cm = ConfusionMatrix(4, 255)
    with torch.no_grad():
        for x, y in data:  # the dense stages 1..k and head k, called directly (no cascade)
            f = x
            for stage in model.stages[:head]:
                f = stage(f)
            logits = F.interpolate(model.heads[head - 1](f), size=y.shape[-2:], mode="bilinear", align_corners=False)
            cm.update(logits.argmax(1), y)
    result = evaluate(model, data, head=head)
    assert result.miou == pytest.approx(cm.miou())
    assert result.stop_fractions[head - 1] == pytest.approx(1.0)
    assert model.rho == 0.5 and torch.equal(model(data[0][0]).logits, before)  # the cascade is restored


def test_head_out_of_range_is_refused():
    with pytest.raises(ValueError, match="head"):
        evaluate(_tiny_model(), [], head=4)


def test_bn_init_on_a_model_without_batchnorm_warns():
    with pytest.warns(UserWarning, match="no BatchNorm"):
        assert init_batchnorm_from_data(_tiny_model(), torch.randn(2, 3, 8, 8)) == 0
