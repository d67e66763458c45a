"""A round's reduction (`ilex.template.partial`, `round_sum`): the sums are exact, so the template
is the same bits whatever the grouping, the order in which shares land, and the place they are
computed (this process, one Dask worker, two). Synthetic shares on a small grid: no registration
runs here (the whole builds, local against Dask and killed-and-resumed, are in test_template.py).
"""

import os
import random

import numpy as np
import pytest

from ilex.errors import IlexError
from ilex.image.io import save_image
from ilex.image.warp_io import Warp, save_warp
from ilex.template.partial import IMAGE_SCALE, Partial, add_partials, fixed, warp_share
from ilex.template.round_sum import RoundSum

SHAPE = (18, 20, 16)
N = 7


@pytest.fixture(scope="module")
def shares(tmp_path_factory):
    """A template and N images' warps and moved images on its grid: (template path, [(index, warp, moved)])."""
    from scipy.ndimage import gaussian_filter

    root = tmp_path_factory.mktemp("shares")
    rng = np.random.default_rng(3)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -(np.asarray(SHAPE) - 1)
    x = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij"), -1)
    head = np.exp(-3 * (x**2).sum(-1)).astype(np.float32)
    template = str(root / "template.nii.gz")
    save_image(template, 100 * head, affine)
    items = []
    for k in range(N):
        matrix = np.eye(4)
        matrix[:3, :3] += 0.03 * rng.standard_normal((3, 3))
        matrix[:3, 3] = 2 * rng.standard_normal(3)
        world = x * (np.asarray(SHAPE) - 1)
        smooth = np.stack([gaussian_filter(rng.standard_normal(SHAPE), 3) for _ in range(3)], -1)
        disp = world @ matrix[:3, :3].T + matrix[:3, 3] - world + 20 * smooth
        moved = 100 * head * (1 + 0.1 * rng.standard_normal(SHAPE)) ** 2
        warp, image = str(root / f"warp{k}.nii"), str(root / f"moved{k}.nii")
        save_warp(warp, Warp(disp.astype(np.float32), affine))
        save_image(image, moved.astype(np.float32), affine)
        items.append((k, warp, image))
    return template, items


def _in_process(template, items) -> Partial:
    total = Partial()
    for index, warp, moved in items:
        total = total + warp_share(index, warp, moved, template, N)
    return total


def _equal(a: Partial, b: Partial) -> None:
    assert a.count == b.count == N
    assert np.array_equal(a.log_sum, b.log_sum)
    assert np.array_equal(a.residual, b.residual)
    assert np.array_equal(a.total, b.total)
    assert a.mean_similarity() == b.mean_similarity()


def test_fixed_point_sums_do_not_depend_on_the_order(shares):
    template, items = shares
    parts = [warp_share(index, warp, moved, template, N) for index, warp, moved in items]
    reference = add_partials(*parts)
    floats = []
    for seed in range(4):
        order = random.Random(seed).sample(parts, len(parts))
        # A different grouping too: the first three summed apart, then the rest.
        _equal(add_partials(add_partials(*order[3:]), add_partials(*order[:3])), reference)
        # What float32 sums in the same order give: not the same bits (so this test can fail).
        total = np.zeros(SHAPE, np.float32)
        for part in order:
            total += (part.total / IMAGE_SCALE).astype(np.float32)
        floats.append(total)
    assert any(not np.array_equal(floats[0], f) for f in floats[1:])
    # The sum is the shares' sum within the resolution: N half-units of 2^-24 at most.
    exact = sum(p.total.astype(np.float64) for p in parts) / IMAGE_SCALE
    assert np.abs(reference.total / IMAGE_SCALE - exact).max() == 0.0


def test_fixed_point_refuses_what_could_overflow_and_what_is_not_finite():
    assert fixed(np.array([1.5, -2.25]), 4.0, 10, "x").tolist() == [6, -9]
    with pytest.raises(IlexError, match="moved.nii: a value of 3e\\+08 is too large to sum over 1000 images"):
        fixed(np.array([3e8]), IMAGE_SCALE, 1000, "moved.nii")
    fixed(np.array([2e8]), IMAGE_SCALE, 1000, "moved.nii")  # under the bound: 2^62 / 1000 / 2^24 = 2.7e8
    with pytest.raises(IlexError, match="warp.nii: holds values that are not finite"):
        fixed(np.array([np.nan]), IMAGE_SCALE, 2, "warp.nii")


def test_float32_values_give_the_integers_of_float64():
    # fixed() scales float32 voxels in float32 (half the memory); a power-of-2 scale is exact in both types
    # and rint's halves go to even in both, so the integers are those of the float64 route.
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [
            (rng.standard_normal(100_000) * 10.0 ** rng.uniform(-9, 3, 100_000)).astype(np.float32),
            np.float32([0.5, 1.5, 2.5, -0.5, -2.5]) / np.float32(IMAGE_SCALE),  # exact halves once scaled
        ]
    )
    assert values.dtype == np.float32
    assert np.array_equal(fixed(values, IMAGE_SCALE, N, "x"), fixed(values.astype(np.float64), IMAGE_SCALE, N, "x"))
    assert fixed(values[-5:], IMAGE_SCALE, N, "x").tolist() == [0, 2, 2, 0, -2]
    # Finite float32 values that overflow float32 once scaled are refused as too large, not as not finite.
    with pytest.raises(IlexError, match="big.nii: a value of 3e\\+37 is too large to sum over 10 images"):
        fixed(np.float32([3e37]), IMAGE_SCALE, 10, "big.nii")
    with pytest.raises(IlexError, match="inf.nii: holds values that are not finite"):
        fixed(np.float32([1.0, np.inf]), IMAGE_SCALE, 10, "inf.nii")


def test_a_running_sum_in_place_is_the_sum(shares):
    template, items = shares
    parts = [warp_share(index, warp, moved, template, N) for index, warp, moved in items]
    reference = add_partials(*parts)
    running = Partial()
    for index, warp, moved in items[::-1]:  # fresh shares: add_into takes the first one's arrays
        running.add_into(warp_share(index, warp, moved, template, N))
    _equal(running, reference)
    with pytest.raises(ValueError, match="in both partial sums"):
        running.add_into(parts[0])


def test_local_round_sum_in_any_order_gives_the_same_bits(shares):
    template, items = shares
    reference = _in_process(template, items)
    for seed in range(2):
        with RoundSum() as summed:
            for index, warp, moved in random.Random(seed).sample(items, len(items)):
                summed.add(warp_share, index, warp, moved, template, N, worker="somewhere")
            _equal(summed.result(), reference)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_dask_round_sum_gives_the_same_bits(shares, workers):
    distributed = pytest.importorskip("distributed")
    template, items = shares
    reference = _in_process(template, items)
    with (
        distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            memory_limit=0,
            resources={"MEMORY": 4e9},
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        addresses = sorted(client.scheduler_info()["workers"])
        ran = []
        for seed in range(2):
            with RoundSum(client, {"MEMORY": 1e9}, {"MEMORY": 1e8}) as summed:
                shuffled = random.Random(seed).sample(items, len(items))
                for j, (index, warp, moved) in enumerate(shuffled):
                    # Shares asked of the workers in turn, as registrations spread over them.
                    summed.add(warp_share, index, warp, moved, template, N, worker=addresses[j % workers])
                _equal(summed.result(), reference)
            ran.append(client.run(lambda: len(__import__("ilex.template.partial", fromlist=["_templates"])._templates)))
    # Every worker read the template (each computed shares), and held one at a time.
    assert all(set(r) == set(addresses) and set(r.values()) == {1} for r in ran), ran
    assert os.path.isfile(template)


# -- a round's memory and disk, checked before it starts ------------------------------------------------


def test_round_budget_states_memory_and_disk_per_image_and_round():
    from ilex.template.budget import round_budget

    # A 100^3 template grid, images of 120^3, 10 images of which 4 are still to register.
    b = round_budget(3, 2.5e9, 10**6, [120**3] * 10, 4, final=False)
    assert (b.registration, b.share, b.sum, b.final) == (2.5e9, 0.5e9 + 160e6, 0.5e9 + 96e6, 0.0)
    assert b.disk_per_image == 16e6 + 2e6 and b.disk == 4 * 18e6
    assert b.worker_peak == 2.5e9 and b.local_peak == 2.5e9 + 0.66e9
    last = round_budget(4, 2.5e9, 10**6, [120**3] * 10, 4, final=True)
    # + the inverse warps (12 B per image voxel) to write, and every image's final outputs.
    assert last.disk == 4 * (18e6 + 12 * 120**3) + 10 * (16e6 + 12 * 120**3)
    assert last.final == 0.5e9 + 120e6 + 48 * 120**3
    assert "round 4: 10 images; memory 2.33 GiB per registration" in last.describe()


def test_a_round_that_does_not_fit_is_refused_before_it_starts(tmp_path, monkeypatch):
    import collections

    import ilex.registration.memory
    from ilex.errors import OptionError
    from ilex.template import budget

    b = budget.round_budget(1, 2e9, 10**6, [10**6] * 100, 100, final=False)  # 1.8 GB of disk
    monkeypatch.setattr(ilex.registration.memory, "available_bytes", lambda: 1e9)
    with pytest.raises(
        OptionError, match="round 1: a registration and an image's share of the sums need about 2.5 GiB"
    ):
        budget.check_budget(b, str(tmp_path))
    budget.check_budget(b, str(tmp_path), memory_check=False)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(budget.shutil, "disk_usage", lambda path: usage(1e12, 1e12 - 1e9, 1e9))
    with pytest.raises(OptionError, match=r"needs about 1.7 GiB of disk for 100 images \(17 MiB each\) but 0.9 GiB"):
        budget.check_budget(b, str(tmp_path), memory_check=False)
