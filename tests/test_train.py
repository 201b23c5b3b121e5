import torch
import torch.nn.functional as F

from data.loader import Batches
from runner.optim import sgd
from runner.recipe import make_scheduler
from runner.train import finetune, fit


def _problem(seed=0, n=256):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8, generator=g)
    y = (x.float().mean((1, 2, 3)) > 127.5).long()
    return x, y


def _loss(model, x, y):
    with torch.no_grad():
        return F.cross_entropy(model(x.float() / 255), y).item()


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))


def test_fit_descends_and_is_reproducible():
    x, y = _problem()
    losses = []
    for _ in range(2):
        model = _model()
        before = _loss(model, x, y)
        opt = sgd(model, lr=0.5, momentum=0.9, weight_decay=0.0)
        fit(model, Batches(x, y, batch_size=32, shuffle=True, seed=0), epochs=15, optimizer=opt,
            scheduler=make_scheduler(opt, name="cosine", epochs=15))
        losses.append(_loss(model, x, y))
    assert losses[0] < 0.5 * before
    assert losses[0] == losses[1]
    assert not model.training


def test_negative_sign_ascends():
    x, y = _problem()
    model = _model()
    before = _loss(model, x, y)
    finetune(model, Batches(x, y, batch_size=32, shuffle=True, seed=0, sign=-1.0), epochs=3,
             lr=0.1, momentum=0.0, weight_decay=0.0, decay_every=10, decay_gamma=0.1)
    assert _loss(model, x, y) > before + 0.5


def test_grad_hook_sees_gradients_before_the_step():
    x, y = _problem()
    model = _model()
    frozen = model[1].weight.detach().clone()

    def zero_weight_grads(m):
        assert m[1].weight.grad is not None
        m[1].weight.grad.zero_()

    opt = sgd(model, lr=0.1, momentum=0.0, weight_decay=0.0)
    fit(model, Batches(x, y, batch_size=64, shuffle=True, seed=0), epochs=1, optimizer=opt,
        grad_hook=zero_weight_grads)
    assert torch.equal(model[1].weight, frozen)


def test_step_schedule_and_bf16_autocast():
    x, y = _problem()
    model = _model()
    opt = sgd(model, lr=1.0, momentum=0.0, weight_decay=0.0)
    sched = make_scheduler(opt, name="step", epochs=4, step_size=2, gamma=0.1)
    fit(model, Batches(x, y, batch_size=64, shuffle=True, seed=0), epochs=4, optimizer=opt,
        scheduler=sched, precision="bf16")
    assert abs(opt.param_groups[0]["lr"] - 0.01) < 1e-12
    assert all(torch.isfinite(p).all() for p in model.parameters())
