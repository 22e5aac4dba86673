"""The contract of every trainable refiner (bench/refiners/_trainable.py and the decoders on it).

Each test runs over every refiner of ``bench.registry.REFINERS`` that reports ``trainable`` — a
new decoder is covered without an edit here (give it small widths in ``refiner_inputs.SMALL`` for
speed) — and over the extra configurations in ``VARIANTS``: shapes and range of ``refine``,
gradients, the coarse map as an input and its ablation, rejection of bad shared options,
carry-over between fits (PGT), determinism, and the shared mini-batch order. What only one
decoder has (its loss, architecture, options, learning) is tested in its own file.
"""
from __future__ import annotations

import pytest
import torch

from bench.records import FeatureSet, RefineBatch
from bench.registry import REFINERS
from refiner_inputs import CNN_LIKE, ODD_RATIO, SMALL, VIT_LIKE, make_batch, make_refiner

TRAINABLE = [name for name in REFINERS.names() if REFINERS.create(name, channels={"a": 8}, image_size=32).trainable]

# Configurations every contract test covers besides a decoder's defaults: label -> options.
VARIANTS = {"realnet": {"select": dict(selection=(8, 4))}}  # RRS selection: active on every input spec here

CASES = [pytest.param((name, {}), id=name) for name in TRAINABLE] + [
    pytest.param((name, options), id=f"{name}-{label}") for name in TRAINABLE for label, options in VARIANTS.get(name, {}).items()
]


@pytest.fixture(params=CASES)
def case(request) -> tuple[str, dict]:
    """(refiner name, options of the configuration)."""
    return request.param


def make(case: tuple[str, dict], layers, size: int, small: bool = False, **options):
    """The configuration's refiner; ``small``: with the decoder's small widths (plumbing tests)."""
    name, variant = case
    return make_refiner(name, layers, size, **variant, **(SMALL.get(name, {}) if small else {}), **options)


def test_every_decoder_is_discovered():
    assert {"ard", "destseg", "realnet"} <= set(TRAINABLE)
    assert not {"none", "gaussian", "guided"} & set(TRAINABLE)


@pytest.mark.parametrize("layers,grid,size", [CNN_LIKE, VIT_LIKE, ODD_RATIO], ids=["cnn", "vit", "odd"])
def test_refine_shape_and_range(case, layers, grid, size):
    batch = make_batch(3, size, layers, grid)
    ref = make(case, layers, size)  # default architecture
    assert ref.trainable and ref.num_parameters() == sum(p.numel() for p in ref.net.parameters())
    out = ref.refine(batch.images, batch.features, batch.coarse)
    assert out.shape == (3, size, size) and out.dtype == torch.float32
    assert torch.all((out >= 0) & (out <= 1)) and torch.isfinite(out).all()
    assert not out.requires_grad


def test_gradients_reach_every_parameter(case):
    layers, grid, size = VIT_LIKE
    batch = make_batch(2, size, layers, grid)
    ref = make(case, layers, size, steps=1)
    ref.fit(batch)  # one step first: a zero-initialised last layer (ARD's residual output) passes no gradient back at step 0
    ref.net.train()
    output = ref.forward(batch.images, ref.fuse_features(batch.features, (grid, grid)), ref.normalise(batch.coarse))
    logits = ref.output_logits(output, batch.coarse)
    assert logits.shape == (2, 1, size, size)
    ref.loss(logits, batch.masks[:, None]).backward()
    missing = [n for n, p in ref.net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_coarse_map_is_an_input_and_its_ablation_removes_it(case):
    layers, grid, size = CNN_LIKE
    batch = make_batch(2, size, layers, grid)
    other = batch.coarse.flip(-1) * 2 + 0.3
    ref = make(case, layers, size)  # default architecture
    a = ref.refine(batch.images, batch.features, batch.coarse)
    assert (a - ref.refine(batch.images, batch.features, other)).abs().max() > 1e-4
    ablated = make(case, layers, size, use_anomaly_map=False)
    a0 = ablated.refine(batch.images, batch.features, batch.coarse)
    assert torch.equal(a0, ablated.refine(batch.images, batch.features, other))
    assert (a0 - a).abs().max() > 1e-4  # same seed, same weights: only the map differs


def test_bad_shared_options_are_rejected(case):
    layers, _, size = CNN_LIKE
    name = make(case, layers, size).display_name
    with pytest.raises(TypeError, match=f"unknown {name} option"):
        make(case, layers, size, stepz=3)
    with pytest.raises(ValueError, match="coarse_norm"):
        make(case, layers, size, coarse_norm="zscore")


def test_weights_and_optimiser_carry_over_between_fits(case):
    layers, grid, size = CNN_LIKE
    g1, g2 = make_batch(6, size, layers, grid, seed=1), make_batch(6, size, layers, grid, seed=2)
    ref = make(case, layers, size, small=True, steps=3, batch_size=4)
    ref.fit(g1)
    after_fit1 = {k: v.clone() for k, v in ref.net.state_dict().items()}
    seen = {}

    def capture(module, args):
        if not seen:
            seen.update({k: v.clone() for k, v in module.state_dict().items()})

    handle = ref.net.register_forward_pre_hook(capture)
    ref.fit(g2)
    handle.remove()
    assert all(torch.equal(seen[k], after_fit1[k]) for k in after_fit1)
    assert any(not torch.equal(ref.net.state_dict()[k], after_fit1[k]) for k in after_fit1)
    assert {int(s["step"]) for s in ref.optimizer.state.values()} == {6}  # Adam continued from fit 1


def test_same_seed_same_result_other_seed_differs(case):
    layers, grid, size = VIT_LIKE
    batch = make_batch(6, size, layers, grid)

    def run(seed):
        ref = make(case, layers, size, small=True, seed=seed, steps=4, batch_size=4)
        losses = ref.fit(batch)
        return losses, ref.refine(batch.images, batch.features, batch.coarse)

    l1, o1 = run(0)
    l2, o2 = run(0)
    _, o3 = run(1)
    assert len(l1) == 4 and l1 == l2 and torch.equal(o1, o2)
    assert not torch.equal(o1, o3)


def test_speed_options_keep_the_result_close_and_bad_precision_is_rejected(case):
    layers, grid, size = CNN_LIKE
    batch = make_batch(6, size, layers, grid)

    def run(**options):
        ref = make(case, layers, size, small=True, steps=2, batch_size=4, **options)
        losses = ref.fit(batch)
        return losses, ref.refine(batch.images, batch.features, batch.coarse)

    base_losses, base = run()
    nhwc_losses, nhwc = run(channels_last=True)  # the same arithmetic in another memory layout
    # ARD's gated outputs blend two maps through a trained gate: 2 Adam steps carry the layout's rounding to ~4e-3
    tolerance = 1e-2 if case[0] in ("ard_gated", "ard_confidence") else 1e-3
    assert nhwc_losses == pytest.approx(base_losses, rel=1e-4) and (nhwc - base).abs().max() < tolerance
    half_losses, half = run(precision="bf16")
    assert half.dtype == torch.float32 and half_losses == pytest.approx(base_losses, rel=0.05)
    assert (half - base).abs().max() < 0.1
    with pytest.raises(ValueError, match="precision"):
        make(case, layers, size, precision="fp8")


# ---- the shared fit loop: every decoder sees the same data order -------------------------------


def labelled_group(n: int, offset: int) -> RefineBatch:
    """Image i is filled with the value offset + i, so a mini-batch tells which images it holds."""
    size, grid = 32, 4
    images = (offset + torch.arange(n, dtype=torch.float32))[:, None, None, None].expand(n, 3, size, size).clone()
    feats = FeatureSet({"a": torch.randn(n, 4, grid, grid)}, torch.randn(n, 2))
    return RefineBatch(images, feats, torch.rand(n, grid, grid), torch.zeros(n, size, size))


def drawn_batches(name: str, seed: int, groups: list[RefineBatch]) -> list[list[int]]:
    ref = REFINERS.create(name, channels={"a": 4}, image_size=32, seed=seed, steps=5, batch_size=3, **SMALL.get(name, {}))
    seen: list[list[int]] = []
    forward = ref.forward

    def recording(images, features, coarse_normalised):
        seen.append([int(v) for v in images[:, 0, 0, 0].round()])
        return forward(images, features, coarse_normalised)

    ref.forward = recording  # instance attribute: the shared fit loop calls it
    for group in groups:
        ref.fit(group)
    return seen


def test_same_seed_same_mini_batches_for_every_decoder():
    groups = [labelled_group(7, 0), labelled_group(5, 100)]  # two PGT groups: the order carries over
    orders = {name: drawn_batches(name, 3, groups) for name in TRAINABLE}
    batches = orders[TRAINABLE[0]]
    assert all(order == batches for order in orders.values()), orders
    assert len(batches) == 10 and all(len(b) == 3 for b in batches)
    assert all(v < 100 for b in batches[:5] for v in b) and all(v >= 100 for b in batches[5:] for v in b)
    # without replacement within a pass: the first two batches of group 1 are 6 distinct images
    assert len(set(batches[0] + batches[1])) == 6
    assert drawn_batches("destseg", 4, groups) != batches  # the order follows the seed
