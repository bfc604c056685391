"""Adversarial attacks (perturbations/adversarial.py): budgets, determinism, and evidence
that the attacks are strong.

The evidence runs on a tiny fully convolutional net trained here in seconds on noisy
synthetic scenes (32 px, a tinted rectangle, cat or dog, on a green background, Gaussian
noise of std 30 grey levels, a void edge on half of them), so the model's margins are
finite and the attacks have something to do. The engine's side (the differentiable
forward through a frozen backbone with the click kept, the labels at the model's input
resolution) runs on a tiny ``point_clip_unet`` checkpoint as the sweep tests train one.
``pytest -s`` prints the measured figures.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from petseg_bench_perturbations import adversarial as adv

BUDGETS = adv.BUDGETS[1:]
COLOURS = np.array([(110, 120, 100), (160, 100, 80), (80, 100, 160)], np.float32)
FIGURES: dict[str, object] = {}


def scenes(rng: np.random.Generator, n: int, size: int = 32, noise: float = 30.0):
    """``n`` noisy scenes: float images ``[n, 3, S, S]`` in 0..255 and labels ``[n, S, S]``."""
    x = np.empty((n, 3, size, size), np.float32)
    y = np.zeros((n, size, size), np.int64)
    for i in range(n):
        c = 1 + int(rng.integers(2))
        h, w = rng.integers(10, 22, 2)
        t, left = rng.integers(0, size - h), rng.integers(0, size - w)
        y[i, t:t + h, left:left + w] = c
        clean = np.where(y[i] == 255, c, y[i])
        if i % 2:
            y[i, t, left:left + w] = 255  # a void edge, as the trimaps have
        x[i] = COLOURS[clean].transpose(2, 0, 1) + rng.normal(0, noise, (3, size, size))
    return torch.from_numpy(np.clip(x, 0, 255)), torch.from_numpy(y)


def miou(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Dataset mIoU over the scored pixels (classes present in prediction or truth)."""
    pred, valid = logits.argmax(1), labels != adv.IGNORE
    ious = []
    for c in range(3):
        p, t = (pred == c) & valid, labels == c
        union = int((p | t).sum())
        if union:
            ious.append(int((p & t).sum()) / union)
    return float(np.mean(ious))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: these small convolutions run faster alone than split on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny():
    """(forward, images, labels): a trained 3-layer conv net on 0..255 input, 16 test scenes."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(8, 3, 1))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    rng = np.random.default_rng(0)

    def forward(x):
        return net((x / 255.0 - 0.5) / 0.25)

    with torch.enable_grad():
        for _ in range(150):
            x, y = scenes(rng, 16)
            loss = nn.functional.cross_entropy(forward(x), y, ignore_index=adv.IGNORE)
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval().requires_grad_(False)
    x, y = scenes(np.random.default_rng(1), 16)
    with torch.no_grad():
        assert miou(forward(x), y) > 0.9  # the model works before it is attacked
    return forward, x, y


def rngs(n: int, key: int = 0) -> list[np.random.Generator]:
    return [np.random.default_rng([key, i]) for i in range(n)]


def attacked_miou(tiny, name: str, eps: float, **kw) -> float:
    forward, x, y = tiny
    out = adv.ATTACKS[name][0](forward, x, y, eps, rngs(len(x))) if not kw else \
        adv.pgd(forward, x, y, eps, rngs(len(x)), **kw)
    with torch.no_grad():
        return miou(forward(out), y)


@pytest.fixture(scope="module")
def curves(tiny):
    """mIoU per attack and budget (level 0 first)."""
    forward, x, y = tiny
    with torch.no_grad():
        clean = miou(forward(x), y)
    out = {name: [clean] + [attacked_miou(tiny, name, eps) for eps in BUDGETS] for name in adv.ATTACKS}
    FIGURES["curves"] = {k: [round(v, 3) for v in vs] for k, vs in out.items()}
    print("\nmIoU by budget", adv.BUDGETS, FIGURES["curves"])
    return out


@pytest.mark.parametrize("name", list(adv.ATTACKS))
def test_budget_respected_and_input_untouched(tiny, name):
    forward, x, y = tiny
    before = x.clone()
    for eps in (0.25, 2.0, 16.0):
        out = adv.ATTACKS[name][0](forward, x, y, eps, rngs(len(x)))
        assert out.shape == x.shape and out.dtype == torch.float32
        assert float((out - x).abs().max()) <= eps * (1 + 1e-6) + 1e-4
        assert float(out.min()) >= 0.0 and float(out.max()) <= 255.0
        assert float((out - x).abs().max()) > 0.5 * eps  # it does use the budget
    assert torch.equal(x, before)
    assert torch.equal(adv.ATTACKS[name][0](forward, x, y, 0.0, rngs(len(x))), x)


@pytest.mark.parametrize("name", ["adv_pgd", "adv_segpgd", "adv_random_sign"])
def test_deterministic_for_given_generators_and_per_image(tiny, name):
    forward, x, y = tiny
    fn = adv.ATTACKS[name][0]
    a = fn(forward, x, y, 4.0, rngs(len(x), 7))
    assert torch.equal(a, fn(forward, x, y, 4.0, rngs(len(x), 7)))
    assert not torch.equal(a, fn(forward, x, y, 4.0, rngs(len(x), 8)))
    # image 5 attacked alone, with its own generator, is image 5 of the batch
    alone = fn(forward, x[5:6], y[5:6], 4.0, rngs(len(x), 7)[5:6])
    assert float((alone[0] - a[5]).abs().max()) < 1e-3


def test_random_signs_move_miou_far_less_than_pgd(curves):
    clean = curves["adv_pgd"][0]
    for eps, level in ((8.0, adv.BUDGETS.index(8.0)), (16.0, adv.BUDGETS.index(16.0))):
        pgd_drop = clean - curves["adv_pgd"][level]
        random_drop = clean - curves["adv_random_sign"][level]
        assert pgd_drop > 0.08, (eps, pgd_drop)
        assert pgd_drop > 5 * max(random_drop, 0.0) + 0.05, (eps, pgd_drop, random_drop)


def test_pgd_at_least_as_strong_as_fgsm(curves):
    pgd, fgsm = np.array(curves["adv_pgd"][1:]), np.array(curves["adv_fgsm"][1:])
    assert (pgd <= fgsm + 0.005).all(), (pgd, fgsm)  # at every budget, up to a pixel or two
    assert pgd.mean() < fgsm.mean()  # and stronger on average
    segpgd = np.array(curves["adv_segpgd"][1:])
    assert (segpgd <= fgsm + 0.005).all(), (segpgd, fgsm)


def test_doubling_pgd_steps_changes_little(tiny):
    diffs = {}
    for eps in (4.0, 8.0, 16.0):
        ten = attacked_miou(tiny, "adv_pgd", eps)
        twenty = attacked_miou(tiny, "adv_pgd", eps, steps=2 * adv.PGD_STEPS, step_size=adv.STEP_FRACTION * eps / 2)
        diffs[eps] = round(ten - twenty, 4)
    FIGURES["steps_doubled"] = diffs
    print("\nmIoU(10 steps) - mIoU(20 steps of half the size):", diffs)
    assert all(abs(d) < 0.02 for d in diffs.values()), diffs


def test_loss_rises_along_the_steps(tiny):
    forward, x, y = tiny
    trace: list = []
    adv.pgd(forward, x, y, 8.0, rngs(len(x)), trace=trace)
    losses = [float(t.mean()) for t in trace]
    FIGURES["loss_by_step"] = [round(v, 4) for v in losses]
    print("\nmean loss at each PGD step (eps 8):", FIGURES["loss_by_step"])
    assert len(losses) == adv.PGD_STEPS + 1
    assert losses[-1] > 2 * losses[0]
    rises = sum(b > a for a, b in zip(losses, losses[1:]))
    assert rises >= 0.7 * adv.PGD_STEPS, losses
    assert max(losses) - losses[-1] < 0.05 * max(losses)  # the end is (near) the best


def test_segpgd_weighs_correct_and_wrong_pixels():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 2.0]], [[0.0, 0.0]]]])  # [1, 3, 1, 2]
    labels = torch.tensor([[[0, 0]]])  # pixel 0 correct, pixel 1 wrong
    ce = nn.functional.cross_entropy(logits, labels, reduction="none")[0, 0]
    steps = 10
    for t in (1, 4, 10):
        lam = (t - 1) / (2 * steps)
        want = ((1 - lam) * ce[0] + lam * ce[1]) / 2
        got = adv.pixel_loss(logits, labels, "segpgd", t, steps)
        assert torch.allclose(got, want.view(1)), (t, got, want)
    assert torch.allclose(adv.pixel_loss(logits, labels), ce.mean().view(1))


def test_void_pixels_are_left_out(tiny):
    forward, x, _ = tiny
    void = torch.full(x.shape[:1] + x.shape[2:], adv.IGNORE, dtype=torch.int64)
    # no scored pixel: no gradient, so a step without a random start moves nothing
    assert torch.equal(adv.pgd(forward, x, void, 8.0, rngs(len(x)), random_start=False), x)
    logits = torch.randn(1, 3, 4, 4)
    labels = torch.zeros(1, 4, 4, dtype=torch.int64)
    labels[0, :2] = adv.IGNORE
    changed = logits.clone()
    changed[0, :, :2] += 100 * torch.randn(3, 2, 4)
    assert torch.allclose(adv.pixel_loss(logits, labels), adv.pixel_loss(changed, labels))


def test_fp32_gradient_at_least_as_strong_as_bf16(tiny):
    forward, x, y = tiny

    def bf16_forward(z):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return forward(z).float()

    found = {}
    for eps in (4.0, 8.0, 16.0):
        fp32 = adv.pgd(forward, x, y, eps, rngs(len(x)))
        bf16 = adv.pgd(bf16_forward, x, y, eps, rngs(len(x)))
        with torch.no_grad():
            m32, m16 = miou(forward(fp32), y), miou(forward(bf16), y)
            l32 = float(adv.pixel_loss(forward(fp32), y).mean())
            l16 = float(adv.pixel_loss(forward(bf16), y).mean())
        found[eps] = {"miou_fp32": round(m32, 4), "miou_bf16": round(m16, 4),
                      "loss_fp32": round(l32, 4), "loss_bf16": round(l16, 4)}
        assert m32 <= m16 + 0.01, found
    FIGURES["bf16"] = found
    print("\nPGD with fp32 vs bf16-autocast gradients:", found)


def test_pgd_matches_torchattacks(tiny):
    torchattacks = pytest.importorskip("torchattacks", reason="torchattacks is not installed (cross-check skipped)")
    forward, x, y = tiny
    full = torch.where(y == adv.IGNORE, torch.zeros_like(y), y)  # torchattacks has no ignore index

    class On01(nn.Module):  # torchattacks wants images in 0..1 and a model returning logits
        def forward(self, z):
            return forward(z * 255.0)

    worst = {}
    for eps in (2.0, 8.0):
        ours = adv.pgd(forward, x, full, eps, rngs(len(x)), steps=10, step_size=eps / 4, random_start=False)
        theirs = torchattacks.PGD(On01(), eps=eps / 255, alpha=eps / 4 / 255, steps=10, random_start=False)(
            x / 255.0, full) * 255.0
        worst[eps] = float((ours - theirs).abs().max())
        # the same iterates up to float rounding (a value within 1e-3 grey levels)
        assert worst[eps] < 1e-3, worst
    FIGURES["torchattacks_max_abs_diff"] = worst
    print("\nmax |ours - torchattacks| (grey levels):", worst)


# --- the engine's side: a real model of the package, on its frozen backbone, with a click


TINY = dict(in_size=32, base_channels=4, backbone="clip:petseg-tiny-vit:none")
SWEEP_MODELS = ["unet", "point_clip_unet"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(checkpoints, data root, cache): ``unet`` and ``point_clip_unet`` (the tiny random-init
    CLIP backbone, a click) trained ten epochs on 4 + 4 synthetic images of 40x56 px."""
    from petseg_bench.config import TrainConfig

    from conftest import quiet, train, write_dataset

    root = write_dataset(tmp_path_factory.mktemp("pets") / "pets", n_cat=2, n_dog=2, size=(40, 56))
    cache = tmp_path_factory.mktemp("cache")
    out = tmp_path_factory.mktemp("ckpt")
    # ten epochs, as the sweep tests train: after one the tiny models predict one class everywhere
    cfg = TrainConfig(epochs=10, lr=1e-2, batch_size=4, workers=0, precision="fp32", device="cpu",
                      val_fraction=0.25, patience=0)
    for name in SWEEP_MODELS:
        train(name, cfg, TINY, root, out, cache_dir=cache, log=quiet)
    return out, root, cache


@pytest.fixture(scope="module")
def point_model(setup):
    from petseg_bench.data.cache import prepare
    from petseg_bench.engine.predictor import load_predictor
    from petseg_bench.engine.runtime import Runtime

    out, root, cache = setup
    test = prepare(root, "test", "ignore", cache)
    images = [test.image(i) for i in range(len(test))]
    labels = [test.label(i) for i in range(len(test))]
    return load_predictor(out / "point_clip_unet" / "best.pt", Runtime.choose("cpu", "fp32")), images, labels


def test_differentiable_forward_is_the_predictors_and_reaches_through_the_backbone(point_model):
    from petseg_bench.engine.attack import attack_labels, differentiable_forward
    from petseg_bench.engine.predictor import letterbox_batch

    pr, images, labels = point_model
    assert "backbone" in pr.spec.inputs and "point" in pr.spec.inputs
    batch, boxes, points = letterbox_batch(images, pr.config.in_size, labels)
    forward = differentiable_forward(pr, points)
    x = batch.float()
    assert torch.allclose(forward(x), pr.logits(batch, points), atol=1e-5)  # the same inputs, the same logits
    assert torch.equal(x, batch.float())  # not modified in place
    # the gradient reaches the pixels through the frozen backbone too
    feats = pr.backbone.extract  # the backbone's own (no_grad) forward would cut it
    z = x.clone().requires_grad_(True)
    from petseg_bench.engine.attack import _backbone_input

    grad, = torch.autograd.grad(feats(_backbone_input(pr.backbone, z)).embedding.sum(), z)
    assert float(grad.abs().sum()) > 0
    y = attack_labels(labels, boxes)
    assert y.shape == (len(images),) + tuple(batch.shape[-2:])
    for i, box in enumerate(boxes):  # the padding is never scored, the content is the letterboxed truth
        inside = np.zeros(y.shape[1:], bool)
        inside[box.top:box.top + box.new_h, box.left:box.left + box.new_w] = True
        assert (y[i].numpy()[~inside] == 255).all()
        assert np.array_equal(y[i].numpy()[inside].reshape(box.new_h, box.new_w),
                              box.crop(box.apply(labels[i], label=True)).astype(np.int64))
    out = adv.pgd(forward, x, y, 8.0, rngs(len(images)))
    assert float((out - x).abs().max()) <= 8.0 + 1e-4 and float((out - x).abs().max()) > 1.0


def test_attack_rng_depends_on_every_key():
    from petseg_bench.engine.attack import attack_rng

    base = attack_rng(0, "adv_pgd", 3, "img_1", "unet").random(4)
    assert np.array_equal(base, attack_rng(0, "adv_pgd", 3, "img_1", "unet").random(4))
    for other in [(1, "adv_pgd", 3, "img_1", "unet"), (0, "adv_segpgd", 3, "img_1", "unet"),
                  (0, "adv_pgd", 4, "img_1", "unet"), (0, "adv_pgd", 3, "img_2", "unet"),
                  (0, "adv_pgd", 3, "img_1", "clip_unet")]:
        assert not np.array_equal(base, attack_rng(*other).random(4)), other


# --- the report's figures


def test_halving_budget_interpolates_and_says_never():
    from petseg_bench.reporting.adversarial_section import halving_budget

    eps = [0.0, 1.0, 2.0, 4.0]
    assert halving_budget(eps, [0.8, 0.7, 0.3, 0.1]) == pytest.approx(1.75)  # 0.4 is 3/4 of the way 0.7 -> 0.3
    assert halving_budget(eps, [0.8, 0.4, 0.3, 0.1]) == pytest.approx(1.0)
    assert halving_budget(eps, [0.8, 0.7, 0.6, 0.5]) is None
    assert halving_budget(eps, [None, 0.1, 0.1, 0.1]) is None


def test_masking_signs_flag_fgsm_over_pgd_and_noise_over_attacks():
    from petseg_bench.reporting.adversarial_section import masking_signs

    eps = [0.0, 1.0, 2.0]
    fine = {"adv_fgsm": {"eps": eps, "miou": [0.8, 0.6, 0.4]}, "adv_pgd": {"eps": eps, "miou": [0.8, 0.5, 0.2]},
            "adv_random_sign": {"eps": eps, "miou": [0.8, 0.8, 0.79]}}
    assert masking_signs(fine) == []
    masked = {**fine, "adv_pgd": {"eps": eps, "miou": [0.8, 0.75, 0.7]}}
    signs = masking_signs(masked)
    assert any("FGSM lowers mIoU more than PGD at eps 1" in s for s in signs), signs
    noisy = {**fine, "adv_random_sign": {"eps": eps, "miou": [0.8, 0.55, 0.3]}}
    assert any("random signs lower mIoU more than adv_fgsm" in s for s in masking_signs(noisy))


# --- the sweep: attack cells per model, resume, shards, selection


def _sweep(setup, run_dir, perts, levels, *, shard=None, resume=False, seed=0, batch_size=3):
    from petseg_bench.engine.sweep import SweepJob, SweepPlan, run_sweep

    from conftest import quiet

    out, root, cache = setup
    plan = SweepPlan(list(SWEEP_MODELS), list(perts), list(levels), seed=seed, batch_size=batch_size, shard=shard)
    job = SweepJob(plan=plan, checkpoints_dir=out, run_dir=run_dir, data_root=root, resume=resume, cache_dir=cache,
                   precision="fp32", device="cpu")
    return run_sweep(job, log=quiet)


def _cells(run_dir):
    from petseg_bench.results import load_run

    df = load_run(run_dir)
    return df.sort_values(["model", "perturbation", "level", "image_id"]).reset_index(drop=True)


ATTACK_PERTS = ["adv_pgd", "adv_random_sign"]


@pytest.fixture(scope="module")
def attack_run(setup, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("adv") / "run"
    record = _sweep(setup, run_dir, ATTACK_PERTS + ["gaussian_noise"], [1, 9])
    return run_dir, record


def test_sweep_computes_attack_cells_for_every_model(attack_run):
    from petseg_bench.results import CLEAN

    run_dir, record = attack_run
    assert record.extra["model_perturbations"] == ATTACK_PERTS
    df = _cells(run_dir)
    for m in SWEEP_MODELS:
        for p in ATTACK_PERTS:
            assert set(df[(df.model == m) & (df.perturbation == p)]["level"]) == {1, 9}, (m, p)
    cm = [c for c in df.columns if c.startswith("cm_")]
    clean = df[(df.perturbation == CLEAN)].set_index(["model", "image_id"])[cm]
    strong = df[(df.perturbation == "adv_pgd") & (df.level == 9)].set_index(["model", "image_id"])[cm]
    assert not strong.equals(clean.loc[strong.index])  # eps 16 changes predictions (of the unet at least)
    weak = df[(df.perturbation == "adv_random_sign") & (df.level == 1)].set_index(["model", "image_id"])[cm]
    changed = lambda cells: int((cells.to_numpy() != clean.loc[cells.index].to_numpy()).sum())  # noqa: E731
    assert changed(strong) > changed(weak)


def test_attack_cells_same_on_rerun_other_batches_and_shards(attack_run, setup, tmp_path):
    run_dir, _ = attack_run
    base = _cells(run_dir)
    for i in range(2):  # two shards into one folder, batches of 5
        from petseg_bench.engine.shard import Shard

        _sweep(setup, tmp_path / "sharded", ATTACK_PERTS + ["gaussian_noise"], [1, 9], shard=Shard(i, 2),
               batch_size=5)
    got = _cells(tmp_path / "sharded")
    cm = [c for c in base.columns if c.startswith("cm_")]
    assert got[["model", "perturbation", "level", "image_id"]].equals(base[["model", "perturbation", "level", "image_id"]])
    assert np.array_equal(got[cm].to_numpy(), base[cm].to_numpy())


def test_attack_cells_resume(attack_run, setup, tmp_path):
    import shutil

    run_dir, _ = attack_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    gone = [f for f in (copy / "cells").rglob("*") if f.is_file() and "adv_pgd" in str(f) and "L9" in str(f)]
    assert gone
    for f in gone:
        f.unlink()
    record = _sweep(setup, copy, ATTACK_PERTS + ["gaussian_noise"], [1, 9], resume=True)
    assert record.cells_computed == len(SWEEP_MODELS)
    assert _cells(copy).equals(_cells(run_dir))


def test_attacks_are_left_out_of_all_and_chosen_by_wildcard():
    from petseg_bench.plugins import get_registry

    reg = get_registry()
    for pattern in ("all", "*"):
        assert not [p for p in reg.select("perturbation", pattern) if p.startswith("adv_")]
    assert sorted(reg.select("perturbation", "adv_*")) == ["adv_fgsm", "adv_pgd", "adv_random_sign", "adv_segpgd"]
    assert reg.select("perturbation", "adv_pgd,gaussian_noise") == ["adv_pgd", "gaussian_noise"]
    spec = reg.get("perturbation", "adv_segpgd")
    assert spec.acts_on_model and spec.levels == adv.BUDGETS


def test_spec_validation_of_the_model_target():
    import dataclasses

    from petseg_bench.specs import PerturbationSpec

    ok = PerturbationSpec("my_attack", "eps", (0.0, 1.0), lambda im, v, r: list(im), target="model",
                          attack=adv.pgd_attack)
    ok.validate()
    with pytest.raises(ValueError, match="needs a callable attack"):
        dataclasses.replace(ok, attack=None).validate()
    with pytest.raises(ValueError, match="attack is given but target is 'pixels'"):
        dataclasses.replace(ok, target="pixels").validate()


def test_a_failing_or_out_of_range_attack_is_one_line(point_model):
    from petseg_bench.engine.attack import AttackLevel, attacked_logits
    from petseg_bench.engine.predictor import letterbox_batch
    from petseg_bench.errors import PluginError

    pr, images, labels = point_model
    batch, boxes, points = letterbox_batch(images, pr.config.in_size, labels)
    ids = [f"img{i}" for i in range(len(images))]

    def boom(forward, x, y, value, rngs):
        raise RuntimeError("no\ngood")

    def too_bright(forward, x, y, value, rngs):
        return x + 300

    for fn, needle in ((boom, "attack mine level 1 failed on model point_clip_unet"), (too_bright, "outside 0..255")):
        with pytest.raises(PluginError, match=needle) as err:
            attacked_logits(AttackLevel(fn, "mine", 1.0, 1, 0), "point_clip_unet", pr, batch, boxes, points, labels, ids)
        assert "\n" not in str(err.value)


def test_report_has_the_adversarial_section_apart_from_the_corruptions(attack_run, tmp_path):
    import json
    import shutil

    from petseg_bench.reporting import write_report

    run_dir, _ = attack_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    write_report(copy, n_boot=0, examples=False)
    summary = json.loads((copy / "summary.json").read_text())
    assert summary["perturbations"] == ["gaussian_noise"]  # the attacks are no corruption
    block = summary["adversarial"]
    assert block["attacks"] == ATTACK_PERTS and sorted(block["models"]) == sorted(SWEEP_MODELS)
    for m in SWEEP_MODELS:
        pgd = block["models"][m]["attacks"]["adv_pgd"]
        assert pgd["levels"] == [0, 1, 9] and pgd["eps"] == [0.0, 0.25, 16.0]
        assert pgd["miou"][0] == pytest.approx(summary["clean"][m]["seed"]["miou"])
        assert (copy / "plots" / f"adversarial-{m}.png").is_file()
    text = (copy / "report.md").read_text()
    assert "## Adversarial robustness" in text and "Threat model: white-box" in text
    assert "SegPGD (Gu et al., ECCV 2022)" in text and "eps halving mIoU: adv_pgd" in text
    assert text.index("## Adversarial robustness") < text.index("## Provenance")


def test_check_gates_attack_cells_like_any_other(attack_run, tmp_path):
    from click.testing import CliRunner

    from petseg_bench.cli import main

    run_dir, _ = attack_run
    base = tmp_path / "baseline.json"
    made = CliRunner().invoke(main, ["baseline", str(run_dir), "--out", str(base)])
    assert made.exit_code == 0, made.output
    assert "adv_pgd" in base.read_text()
    checked = CliRunner().invoke(main, ["check", str(run_dir), "--baseline", str(base)])
    assert checked.exit_code == 0, checked.output
    assert "adv_pgd" in checked.output


def test_cli_run_with_an_attack_wildcard(setup, tmp_path):
    from click.testing import CliRunner

    from petseg_bench.cli import main

    out, root, cache = setup
    args = ["run", "--models", ",".join(SWEEP_MODELS), "--perturbations", "adv_*", "--levels", "9",
            "--checkpoints", str(out), "--out", str(tmp_path / "run"), "--data-root", str(root), "--cache-dir",
            str(cache), "--batch-size", "4", "--precision", "fp32", "--device", "cpu", "--no-report"]
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 0, done.output
    df = _cells(tmp_path / "run")
    assert sorted(set(df.perturbation) - {"clean"}) == ["adv_fgsm", "adv_pgd", "adv_random_sign", "adv_segpgd"]
    again = CliRunner().invoke(main, args + ["--resume"])  # nothing left to compute
    assert again.exit_code == 0 and "10 finished cells kept, 0 to compute" in again.output, again.output


@pytest.mark.slow
def test_ray_backend_gives_the_local_attack_cells(attack_run, setup, tmp_path):
    ray = pytest.importorskip("ray")
    from petseg_bench.engine.sweep import SweepJob, SweepPlan, run_sweep

    from conftest import quiet

    run_dir, _ = attack_run
    out, root, cache = setup
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        plan = SweepPlan(list(SWEEP_MODELS), ATTACK_PERTS + ["gaussian_noise"], [1, 9], batch_size=3)
        job = SweepJob(plan=plan, checkpoints_dir=out, run_dir=tmp_path / "ray", data_root=root, cache_dir=cache,
                       precision="fp32", device="cpu", backend="ray", address=ray.get_runtime_context().gcs_address)
        run_sweep(job, log=quiet)
    finally:
        ray.shutdown()
    assert _cells(tmp_path / "ray").equals(_cells(run_dir))
