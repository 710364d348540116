"""The optimiser: DenseAdam takes the same steps as torch's Adam whatever the weights' layout."""
from __future__ import annotations

import copy

import pytest
import torch

from ultraseg.optim import DenseAdam, memory_order


def test_memory_order_names_the_contiguous_permutation():
    cl = torch.zeros(8, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    assert memory_order(cl) == [0, 2, 3, 1]
    assert cl.permute(0, 2, 3, 1).is_contiguous()
    assert memory_order(torch.zeros(8, 4, 3, 3)) is None          # contiguous already
    assert memory_order(torch.zeros(5, 7).t()) == [1, 0]
    assert memory_order(torch.zeros(5, 1).expand(5, 4)) is None   # overlapping: no order
    assert memory_order(torch.zeros(6, 8)[:, ::2]) is None         # gapped: no order


def _model(channels_last: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 4, 3), torch.nn.Conv2d(4, 1, 1))
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int = 4,
           mismatch: str = "") -> None:
    """``steps`` Adam steps on random inputs; ``mismatch`` puts the 4-d weights' gradients
    ("grad") or moments ("moments") in the contiguous layout before each step."""
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(2, 3, 12, 12, generator=gen)
        optimizer.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        for p in model.parameters():
            state = optimizer.state.get(p, {})
            if mismatch == "grad" and p.dim() == 4:
                p.grad = p.grad.contiguous()
            if mismatch == "moments" and p.dim() == 4 and state:
                state["exp_avg"] = state["exp_avg"].contiguous()
                state["exp_avg_sq"] = state["exp_avg_sq"].contiguous()
        optimizer.step()


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("mismatch", ["", "grad", "moments"])
def test_dense_adam_steps_as_adam_on_channels_last_weights(fused, mismatch):
    plain = _model(channels_last=False)
    dense = _model(channels_last=True)
    _train(plain, torch.optim.Adam(plain.parameters(), lr=1e-2, weight_decay=1e-3))
    opt = DenseAdam(dense.parameters(), lr=1e-2, weight_decay=1e-3, fused=fused)
    # With a mismatch, torch's fused CPU kernel alone takes wrong steps (torch 2.13).
    _train(dense, opt, mismatch=mismatch)
    for a, b in zip(plain.parameters(), dense.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    # The weights keep their layout; the state is a plain Adam's, in the weights' shapes.
    weights = [p for p in dense.parameters() if p.dim() == 4]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    state = opt.state_dict()["state"]
    assert [s["exp_avg"].shape for s in state.values()] == [p.shape for p in dense.parameters()]
    torch.optim.Adam(dense.parameters()).load_state_dict(opt.state_dict())


def test_dense_adam_hands_the_update_contiguous_views_of_the_weights_memory():
    model = _model(channels_last=True)
    opt = DenseAdam(model.parameters(), lr=1e-2, fused=True)
    model(torch.randn(2, 3, 12, 12)).square().mean().backward()
    lists: list[list[torch.Tensor]] = [[] for _ in range(6)]
    opt._init_group(opt.param_groups[0], *lists)
    params, grads, exp_avgs, exp_avg_sqs = lists[:4]
    assert all(t.is_contiguous() for t in params + grads + exp_avgs + exp_avg_sqs)
    for p, view in zip(model.parameters(), params):
        assert view.data_ptr() == p.data_ptr()                    # the weight itself, viewed
        if not p.is_contiguous():
            assert view.shape == (p.shape[0], *p.shape[2:], p.shape[1])


def test_dense_adam_resumes_from_moments_saved_in_another_layout():
    plain = _model(channels_last=False)
    plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-2)
    _train(plain, plain_opt, steps=2)
    dense = _model(channels_last=True)
    dense.load_state_dict(plain.state_dict())
    dense_opt = DenseAdam(dense.parameters(), lr=1e-2, fused=True)
    # contiguous moments for channels_last weights (a deep copy: loading shares the tensors)
    dense_opt.load_state_dict(copy.deepcopy(plain_opt.state_dict()))
    _train(plain, plain_opt, steps=2)
    _train(dense, dense_opt, steps=2)
    for a, b in zip(plain.parameters(), dense.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
