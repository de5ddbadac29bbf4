"""torch_onnx_adam.py - ONNX's Adam update in PyTorch, for the training tests
that compare nibble with PyTorch (torch.optim.Adam places epsilon differently:
it adds it to sqrt(H) / sqrt(1 - b^T), ONNX to sqrt(H))."""
import math

import torch


class OnnxAdam(torch.optim.Optimizer):
    """ai.onnx.preview.training Adam (alpha 0.9, beta 0.999, epsilon 1e-8, no weight decay):
    V = a V + (1-a) G, H = b H + (1-b) G^2, X -= R sqrt(1-b^T) / (1-a^T) * V / (sqrt(H) + eps)."""

    def __init__(self, params, lr):
        super().__init__(params, dict(lr=lr))

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g["params"]:
                st = self.state[p]
                if not st:
                    st["t"], st["v"], st["h"] = 0, torch.zeros_like(p), torch.zeros_like(p)
                st["t"] += 1
                t = st["t"]
                st["v"].mul_(0.9).add_(p.grad, alpha=0.1)
                st["h"].mul_(0.999).add_(p.grad * p.grad, alpha=0.001)
                r = g["lr"] * math.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
                p.sub_(r * st["v"] / (st["h"].sqrt() + 1e-8))
