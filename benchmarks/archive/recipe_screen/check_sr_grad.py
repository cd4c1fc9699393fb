"""Check: the closed-form Eq. 3 gradient of common.sr_grad_ equals autograd of sc.structural_regularization."""

import torch
from common import *

torch.manual_seed(0)
for arch in ["small_cnn", "cifar_resnet20", "mobilenet_v2"]:
    m = build(arch, 0)
    for n, l in structured_layers(m):
        l.weight.grad = torch.zeros_like(l.weight)
    for n, l in structured_layers(m):
        sr_grad_(l.weight, l.basis, 1.0)
    an = {n: l.weight.grad.clone() for n, l in structured_layers(m)}
    for n, l in structured_layers(m): l.weight.grad = None
    sc.structural_regularization(m).backward()
    d = max(float((an[n]-l.weight.grad).abs().max()/l.weight.grad.abs().max()) for n,l in structured_layers(m))
    print(arch, "max rel diff analytic vs autograd", d)
