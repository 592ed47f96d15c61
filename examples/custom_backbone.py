"""Wrap your own 3-stage CNN as a Deep Layer Cascade, and check it against the dense reference.

    python examples/custom_backbone.py
"""
import torch
import torch.nn as nn

import sparsecascade as sc


def conv_bn_relu(c_in, c_out, stride=1, dilation=1):
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class Residual(nn.Module):
    """Any module works: the cascade converts its convolutions and keeps its forward."""

    def __init__(self, c, dilation):
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(c, c, dilation=dilation), nn.Conv2d(c, c, 3, padding=dilation,
                                                                                     dilation=dilation))

    def forward(self, x):
        return torch.relu(x + self.body(x))


def my_network():
    """Three stages at output stride 8: stage 1 downsamples, stages 2 and 3 are dilated."""
    stage1 = nn.Sequential(conv_bn_relu(3, 32, 2), conv_bn_relu(32, 64, 2), conv_bn_relu(64, 64, 2))
    stage2 = nn.Sequential(Residual(64, 2), Residual(64, 2))
    stage3 = nn.Sequential(conv_bn_relu(64, 96, dilation=4), Residual(96, 4))
    return [stage1, stage2, stage3], [64, 64, 96]


def main():
    torch.manual_seed(0)
    stages, channels = my_network()
    model = sc.LayerCascade(stages, num_classes=11, stage_channels=channels, rho=0.5).eval()
    for head in model.heads:  # untrained heads are unsure of everything: sharpen them for the demo
        head[-1].weight.data *= 100

    image = torch.randn(1, 3, 240, 320)
    with torch.no_grad():
        out = model(image)
        reference = model.set_backend("dense")(image)  # every layer dense, then masked
    model.set_backend("auto")
    print("labels", tuple(out.labels.shape), "stage map", tuple(out.stage_map.shape))
    print("decided at each stage:", [f"{f:.1%}" for f in out.stop_fractions])
    print(f"MACs executed: {out.macs / 1e9:.2f} G of {out.dense_macs / 1e9:.2f} G dense ({out.mac_ratio:.1%})")
    diff = (out.logits - reference.logits).abs().max().item()
    print(f"max |sparse - dense reference| = {diff:.2e}")
    assert torch.equal(out.stage_map, reference.stage_map) and diff < 1e-3


if __name__ == "__main__":
    main()
