"""The adversarial-spheres experiment: its maths checked on hand-built quadratic nets whose axis weights are
known, the manifold attack, and one quick end-to-end run through the CLI."""

from __future__ import annotations

import json
import math
from statistics import NormalDist

import pytest
import torch

from squiggles.errors import SquigglesError
from squiggles.experiments import make_config
from squiggles.experiments import spheres as sp
from squiggles.experiments import spheres_analysis as sa
from tests.conftest import run_cli

R = 1.3
LOW = 1 / R**2  # 0.5917...


def hand_built(alpha: list[float], scale: float = 2.0, extra_hidden: int = 3, seed: int = 0) -> sp.QuadraticNet:
    """A quadratic net with M = W^T W / (-b) = Q diag(alpha) Q^T for a random rotation Q (and idle hidden units)."""
    d = len(alpha)
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    w = torch.zeros(d + extra_hidden, d, dtype=torch.float64)
    w[:d] = torch.diag((torch.tensor(alpha, dtype=torch.float64) * scale).sqrt()) @ q.T
    net = sp.seeded(lambda: sp.QuadraticNet(d, d + extra_hidden), 0, torch.device("cpu"))
    with torch.no_grad():
        net.weight.copy_(w.float())
        net.bias.fill_(-scale)
    net.rotation = q  # for the tests: the true axes are the columns of q
    return net.eval()


def phi(z: float) -> float:
    return NormalDist().cdf(z)


# --- the ellipsoid --------------------------------------------------------------------------------------


def test_ellipsoid_of_hand_built_net_recovers_known_axis_weights() -> None:
    alpha = [1.4, 1.0, 0.9, 0.7, 0.6, 0.3]  # 1.4 above the band, 0.3 below it; 1.0 and 0.6 just inside
    net = hand_built(alpha)
    found, axes = net.ellipsoid()
    assert found.tolist() == pytest.approx(alpha, abs=1e-5)
    assert sa.bad_axes(found, R) == {"bad_axes": 2, "above_band": 1, "below_band": 1}
    # each recovered axis is the known one, up to sign
    assert (axes.T @ net.rotation).abs().diagonal().tolist() == pytest.approx([1.0] * 6, abs=1e-4)
    # the network says "outer" exactly where x^T M x > 1: its logit is (-b)(x^T M x - 1)
    x = sa.sphere_points(100, 6, 1.15, torch.Generator().manual_seed(1))
    quad = ((x.double() @ axes) ** 2 * found).sum(1)
    assert net(x).double().tolist() == pytest.approx((2.0 * (quad - 1)).tolist(), abs=1e-4)


def test_band_edges_and_a_perfect_net() -> None:
    assert sa.band(R) == pytest.approx((0.591716, 1.0), abs=1e-6)
    alpha = torch.tensor([1.0, 0.8, LOW + 1e-9], dtype=torch.float64)
    assert sa.bad_axes(alpha, R)["bad_axes"] == 0
    edges = torch.tensor([1.0 + 1e-9, LOW - 1e-9], dtype=torch.float64)
    assert sa.bad_axes(edges, R) == {"bad_axes": 2, "above_band": 1, "below_band": 1}


def test_analytic_error_matches_the_formula_by_hand() -> None:
    alpha = torch.tensor([1.4, 1.0, 0.9, 0.7, 0.6, 0.3], dtype=torch.float64)
    c_in, c_out = sa.error_weights(alpha, R)
    # inner sphere: wrong iff sum (a-1) g^2 > 0, mu = sum(a - 1) = -1.1, sigma^2 = 2 sum (a-1)^2 = 2 * 0.91
    assert sa.normal_tail(c_in) == pytest.approx(1 - phi(1.1 / math.sqrt(1.82)), rel=1e-9)
    # outer sphere: wrong iff sum (1 - R^2 a) g^2 > 0
    mu = sum(1 - R**2 * a for a in alpha.tolist())
    sigma = math.sqrt(2 * sum((1 - R**2 * a) ** 2 for a in alpha.tolist()))
    assert sa.normal_tail(c_out) == pytest.approx(1 - phi(-mu / sigma), rel=1e-9)


def test_saddlepoint_tail_matches_the_exact_beta_probability() -> None:
    """With k weights +a and m weights -b, P[a X_k > b X_m] = P[Beta(k/2, m/2) > b/(a+b)] exactly."""
    from scipy.stats import beta

    for k, m, a, b in ((5, 45, 0.4, 0.3), (20, 480, 0.5, 0.4), (50, 450, 0.3, 0.4)):
        c = torch.tensor([a] * k + [-b] * m, dtype=torch.float64)
        exact = beta.sf(b / (a + b), k / 2, m / 2)
        assert sa.saddlepoint_tail(c) == pytest.approx(exact, rel=0.03), (k, m, exact)
    # deep in the tail (3e-49 here) the normal approximation is off by orders of magnitude, the saddle point not
    c = torch.tensor([0.5] * 20 + [-0.4] * 480, dtype=torch.float64)
    exact = beta.sf(0.4 / 0.9, 10, 240)
    assert exact < 1e-45 and sa.normal_tail(c) > 300 * exact
    assert sa.saddlepoint_tail(c) == pytest.approx(exact, rel=0.05)
    assert sa.saddlepoint_tail(torch.tensor([-0.1, -0.5, 0.0])) == 0.0  # no error can exist


def test_sampled_errors_agree_with_the_network_and_the_exact_rate() -> None:
    from scipy.stats import beta

    alpha = [1.3] * 4 + [0.9] * 36  # c = alpha - 1: four axes +0.3, the rest -0.1; no outer-sphere errors
    net = hand_built(alpha)
    found, _ = net.ellipsoid()
    exact = beta.sf(0.1 / 0.4, 2, 18)  # P[0.3 X_4 > 0.1 X_36]
    n = 200_000
    e_in, e_out = sa.sampled_errors(found, R, n, torch.Generator().manual_seed(3))
    assert e_out == 0 and 0.01 < exact < 0.1
    assert e_in / n == pytest.approx(exact, abs=4 * math.sqrt(exact / n))
    assert sa.saddlepoint_tail(sa.error_weights(found, R)[0]) == pytest.approx(exact, rel=0.05)
    with torch.no_grad():  # the network itself on real points of the inner sphere
        x = sa.sphere_points(n, len(alpha), 1.0, torch.Generator().manual_seed(4))
        wrong = (sa.wrong_margin(net, x, torch.zeros(n)) > 0).float().mean().item()
    assert wrong == pytest.approx(exact, abs=4 * math.sqrt(exact / n))


def test_upper95_bounds() -> None:
    assert sa.upper95(0, 10_000_000) == pytest.approx(2.9957e-7, rel=1e-3)  # the rule of three
    assert 0.01 < sa.upper95(100, 10_000) < 0.0125


# --- distances to the nearest error ---------------------------------------------------------------------


def test_nearest_error_is_the_exact_nearest_point_in_3d() -> None:
    c = torch.tensor([0.3, -0.2, -0.4], dtype=torch.float64)  # errors around the first axis only
    u = sa.sphere_points(8, 3, 1.0, torch.Generator().manual_seed(5)).double()
    u = u[(u**2 * c).sum(1) < 0]  # correctly classified starts
    angle, v = sa.nearest_error(c, u)
    assert (v.norm(dim=1) - 1).abs().max() < 1e-9
    assert (v**2 * c).sum(1).abs().max() < 1e-9  # on the boundary
    cloud = sa.sphere_points(400_000, 3, 1.0, torch.Generator().manual_seed(6)).double()
    cloud = cloud[(cloud**2 * c).sum(1) >= 0]
    brute = torch.arccos((u @ cloud.T).clamp(-1, 1)).min(1).values
    assert angle.tolist() == pytest.approx(brute.tolist(), abs=0.01)
    assert torch.isinf(sa.nearest_error(-c.abs(), u)[0]).all()  # no error set at all


def test_cap_angle_against_the_closed_form_in_3d() -> None:
    # in R^3, x_1 is uniform on [-1, 1] (Archimedes): P[x_1 >= s] = (1 - s)/2
    assert sa.cap_angle(0.1, 3) == pytest.approx(math.asin(0.8), abs=1e-3)
    assert sa.cap_angle(0.5, 500) == 0.0
    assert sa.cap_angle(1e-20, 500) > sa.cap_angle(1e-7, 500) > sa.cap_angle(1e-2, 500) > 0


# --- the manifold attack --------------------------------------------------------------------------------


def test_manifold_attack_finds_errors_on_the_sphere_when_a_bad_axis_exists() -> None:
    alpha = [1.5] + [0.8] * 19  # one axis above 1: inner-sphere errors exist
    net = hand_built(alpha)
    x = sa.sphere_points(40, 20, 1.0, torch.Generator().manual_seed(7))
    y = torch.zeros(40, dtype=torch.long)
    result = sa.manifold_attack(net, x, y, steps=200, step=0.02)
    assert result.found.all()
    assert (result.x_error.norm(dim=1) - 1).abs().max() < 1e-5  # still on the inner sphere
    with torch.no_grad():
        assert (sa.wrong_margin(net, result.x_error, y) > 0).all()
    found, axes = net.ellipsoid()
    exact, _ = sa.nearest_error(sa.error_weights(found, R)[0], x.double() @ axes)
    assert (result.angle.double() >= exact - 1e-3).all()  # never closer than the exact nearest error
    assert (result.angle.double() <= exact + 0.2).all()  # and not far from it
    assert result.distance.tolist() == pytest.approx((2 * torch.sin(result.angle / 2)).tolist(), abs=1e-4)


def test_manifold_attack_finds_nothing_on_a_perfect_net() -> None:
    net = hand_built([0.95, 0.9, 0.8, 0.7, 0.65, 0.6] * 3)
    y = torch.arange(40) % 2
    x = sa.sphere_points(40, 18, 1 + (R - 1) * y.float(), torch.Generator().manual_seed(8))
    result = sa.manifold_attack(net, x, y, steps=100, step=0.05)
    assert not result.found.any()
    assert torch.isnan(result.distance).all()
    rows = sa.attack_rows(net, "quadratic", x, y, steps=20, step=0.05, radius=R, exact=torch.full((40,), math.inf))
    assert [(r["sphere"], r["starts"], r["found"], r["errors_exist"]) for r in rows] == [
        ("inner", 20, 0, False),
        ("outer", 20, 0, False),
    ]


# --- settings and the run -------------------------------------------------------------------------------


def test_settings_are_checked() -> None:
    assert make_config("spheres", quick=True).dims == [20, 50]
    for bad in ({"radius": 0.9}, {"dims": [1]}, {"batch_size": 1}, {"attack_step": 2.0}, {"train_samples": 10}):
        with pytest.raises(SquigglesError):
            make_config("spheres", overrides=bad)


def test_training_leaves_the_global_rng_alone() -> None:
    from squiggles.experiments.base import Context

    config = sp.Config(dim=5, hidden=8, train_samples=400, batch_size=100)
    ctx = Context(out=None, device=torch.device("cpu"), progress=False)  # type: ignore[arg-type]
    before = torch.random.get_rng_state()
    net = sp.seeded(lambda: sp.QuadraticNet(5, 8), 0, ctx.device)
    sp.train_online(ctx, net, 5, config)
    assert torch.equal(before, torch.random.get_rng_state())


def test_spheres_refuses_other_datasets(tmp_path) -> None:
    proc = run_cli(
        "experiment",
        "spheres",
        "--quick",
        "--dataset",
        "digits",
        "--out",
        str(tmp_path / "x"),
        env={"OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2
    assert "generates its own data" in proc.stderr


def test_quick_run_end_to_end(tmp_path) -> None:
    out = tmp_path / "x"
    proc = run_cli("experiment", "spheres", "--quick", "--out", str(out), "--quiet", env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    data = json.loads((out / "results.json").read_text())
    assert (out / "report.html").is_file()
    assert {
        "summary",
        "description",
        "notes",
        "published",
        "quadratic_scan",
        "relu",
        "attacks",
        "bad_axes",
        "error_rate",
        "test_points",
        "figures",
    } <= set(data)
    assert {f["path"] for f in data["figures"]} == {"figures/alphas.png", "figures/scan.png", "figures/outputs.png"}
    assert all((out / f["path"]).is_file() for f in data["figures"])
    assert all({"quantity", "published", "ours"} <= set(row) for row in data["published"])
    scan = data["quadratic_scan"]
    assert [r["dim"] for r in scan] == [20, 50]
    for row in scan:
        assert row["alpha_max_from_net"] == pytest.approx(row["alpha_max"], abs=2e-3)  # the net agrees at v_1
        assert row["bad_axes"] == row["above_band"] + row["below_band"] <= row["dim"]
        assert row["test_points"] == (200_000 if row["dim"] == 50 else 100_000)
    for a in data["attacks"]:
        if a.get("errors_exist") is False:
            assert a["found"] == 0  # nothing to find, nothing found
        if a["found"] and a.get("exact_median_angle_deg") is not None:
            assert a["median_angle_deg"] >= a["exact_median_angle_deg"] - 0.5
    assert data["relu"][0]["test_points"] == 20_000
    assert data["bad_axes"] == scan[1]["bad_axes"]
