"""`ResidualVectorQuantizer`: the post's 2-D example, EMA codebooks, dead codes, gradients.

Shape symbols: N vectors, D embedding dim (2 here), C codebook size, K' levels used.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from codecflow.models.rvq import ResidualVectorQuantizer, RVQMetrics, RVQOutput

# Eight well separated 2-D Gaussians, as the post's figures of k-means and RVQ on points.
CENTERS = torch.tensor(
    [[4.0 * math.cos(2 * math.pi * i / 8), 4.0 * math.sin(2 * math.pi * i / 8)] for i in range(8)]
)  # [8, 2]


def _points(n: int, seed: int) -> Tensor:
    """float `[N, 2]` samples of the mixture (std 0.3 around each centre)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(CENTERS), (n,), generator=g)
    return CENTERS[idx] + 0.3 * torch.randn(n, 2, generator=g)


def _trained(num_levels: int, codebook_size: int = 4, steps: int = 60) -> ResidualVectorQuantizer:
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(2, codebook_size, num_levels, update_speed=0.1).train()
    for step in range(steps):
        rvq(_points(512, seed=step))
    return rvq.eval()


def _error(rvq: ResidualVectorQuantizer, x: Tensor, num_levels: int) -> float:
    return float((rvq(x, num_levels).quantized - x).square().sum(dim=1).mean())


def test_more_levels_quantize_better_on_the_posts_2d_example() -> None:
    rvq = _trained(num_levels=4)
    x = _points(4096, seed=1000)  # held out
    errors = [_error(rvq, x, k) for k in (1, 2, 3, 4)]
    print("mean squared error by levels 1..4:", [round(e, 4) for e in errors])
    assert errors[1] < errors[0] and errors[3] < errors[1]
    assert errors[3] < 0.25 * errors[0]
    # Four codes cannot cover eight clusters: one level leaves at least the cluster spread.
    assert errors[0] > 0.18


def test_training_lowers_the_error_of_the_random_initialisation() -> None:
    x = _points(4096, seed=1000)
    torch.manual_seed(0)
    fresh = ResidualVectorQuantizer(2, 4, 2, update_speed=0.1).train()
    fresh(_points(512, seed=0))  # initialise from one batch (and one EMA step)
    trained = _trained(num_levels=2)
    assert _error(trained, x, 2) < _error(fresh.eval(), x, 2)


def test_output_types_shapes_and_metrics_ranges() -> None:
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(2, 4, 3).train()
    x = _points(256, seed=0)
    out = rvq(x, num_levels=2)
    assert isinstance(out, RVQOutput) and isinstance(out.metrics, RVQMetrics)
    assert out.quantized.shape == (256, 2) and out.quantized.dtype == x.dtype
    assert out.codes.shape == (256, 2) and out.codes.dtype == torch.int64
    assert int(out.codes.min()) >= 0 and int(out.codes.max()) < 4
    assert out.commitment_loss.ndim == 0 and float(out.commitment_loss) >= 0
    m = out.metrics
    assert len(m.per_level_entropy_bits) == 2 and len(m.dead_code_fraction) == 2
    assert all(0.0 <= h <= math.log2(4) + 1e-6 for h in m.per_level_entropy_bits)
    assert all(0.0 <= f <= 1.0 for f in m.dead_code_fraction)
    # Random initial entries from 8 clusters: the first level uses more than one code.
    assert m.per_level_entropy_bits[0] > 0.5


def test_codebooks_are_buffers_not_parameters() -> None:
    rvq = ResidualVectorQuantizer(8, 16, 4)
    assert list(rvq.parameters()) == []
    names = set(rvq.state_dict())
    assert {"codebooks", "cluster_usage", "embedding_sum", "initialized"} <= names
    assert rvq.codebooks.shape == (4, 16, 8)


def test_first_training_batch_initialises_only_the_levels_it_uses() -> None:
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(2, 8, 3).train()
    x = _points(100, seed=0)
    rvq(x, num_levels=2)
    assert rvq.initialized.tolist() == [True, True, False]
    assert torch.all(rvq.codebooks[2] == 0)
    # Level 0's entries came from the batch (one slow EMA step later: still near the data).
    dist = torch.cdist(rvq.codebooks[0], x).min(dim=1).values  # [C]
    assert float(dist.max()) < 0.5


def test_initialisation_with_fewer_vectors_than_codes() -> None:
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(2, 64, 1).train()
    x = _points(10, seed=0)
    rvq(x)
    book = rvq.codebooks[0]  # [C, D]
    assert torch.isfinite(book).all()
    assert torch.unique(book, dim=0).shape[0] > 10  # noisy copies, not only 10 distinct points


def test_eval_mode_changes_nothing() -> None:
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(2, 4, 2).train()
    rvq(_points(256, seed=0))
    before = {k: v.clone() for k, v in rvq.state_dict().items()}
    rvq.eval()
    rvq(_points(256, seed=1))
    rvq.encode(_points(256, seed=2))
    for k, v in rvq.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_uninitialised_levels_are_not_initialised_in_eval_mode() -> None:
    rvq = ResidualVectorQuantizer(2, 4, 2).eval()
    out = rvq(_points(32, seed=0))
    assert not bool(rvq.initialized.any())
    assert torch.all(out.codes == 0)


def test_ema_moves_codes_toward_their_assigned_means() -> None:
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(2, 4, 1, update_speed=0.3).train()
    x = _points(1024, seed=0)
    rvq(x)  # initialise
    book = rvq.codebooks[0].clone()  # [C, D]
    codes = rvq.encode(x)[:, 0]  # [N], the assignment the next step will use
    means = torch.stack([x[codes == c].mean(dim=0) for c in range(4)])  # [C, D]
    assert torch.all(torch.bincount(codes, minlength=4) > 0)
    rvq(x)
    new_book = rvq.codebooks[0]
    before = (book - means).norm(dim=1)  # [C]
    after = (new_book - means).norm(dim=1)  # [C]
    assert torch.all(after < before)
    # A partial step: still short of the mean where it was far from it.
    assert torch.all(after[before > 0.1] > 0)


def test_update_speed_one_is_a_kmeans_step() -> None:
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(2, 4, 1, update_speed=1.0, dead_code_threshold=0.0).train()
    x = _points(1024, seed=0)
    rvq(x)  # initialise (and one step)
    codes = rvq.encode(x)[:, 0]
    used = torch.bincount(codes, minlength=4) > 0
    means = torch.stack(
        [x[codes == c].mean(dim=0) if used[c] else torch.zeros(2) for c in range(4)]
    )
    rvq(x)
    # The new entries are the assigned means (up to the Laplace smoothing's 1e-5).
    assert torch.allclose(rvq.codebooks[0][used], means[used], atol=1e-3)


def test_dead_codes_are_teleported_to_batch_vectors() -> None:
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(2, 4, 1, update_speed=0.5, dead_code_threshold=1.0).train()
    x = _points(256, seed=0)
    rvq(x)
    # Send code 3 far away: no vector picks it, its EMA count halves each step until it dies.
    far = torch.tensor([100.0, 100.0])
    rvq.codebooks[0, 3] = far
    rvq.embedding_sum[0, 3] = far * rvq.cluster_usage[0, 3]
    seen_dead = False
    for step in range(20):
        batch = _points(256, seed=step + 1)
        out = rvq(batch)
        if out.metrics.dead_code_fraction[0] > 0:
            seen_dead = True
            # Teleported onto a vector of this very batch.
            assert float(torch.cdist(rvq.codebooks[0, 3:4], batch).min()) < 1e-5
            break
    assert seen_dead
    assert float(rvq.codebooks[0, 3].norm()) < 10.0
    assert float(rvq.cluster_usage[0, 3]) == pytest.approx(1.0)


def test_straight_through_gradient_reaches_the_input() -> None:
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(2, 4, 3).train()
    x = _points(64, seed=0).requires_grad_(True)
    out = rvq(x)
    out.quantized.sum().backward()
    assert x.grad is not None
    assert torch.equal(x.grad, torch.ones_like(x))  # identity, whatever the number of levels


def test_commitment_loss_pulls_the_input_toward_its_entries() -> None:
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(2, 4, 1).train()
    rvq(_points(256, seed=0))
    rvq.eval()
    x = _points(64, seed=1).requires_grad_(True)
    out = rvq(x)
    out.commitment_loss.backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    # One level: the loss is MSE(x, sg(entry)), whose gradient is 2 (x - entry) / numel.
    expected = 2 * (x.detach() - out.quantized.detach()) / x.numel()
    assert torch.allclose(x.grad, expected, atol=1e-6)


def test_commitment_loss_is_the_mean_over_levels() -> None:
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(2, 4, 2).train()
    rvq(_points(256, seed=0))
    rvq.eval()
    x = _points(128, seed=1)
    codes = rvq.encode(x)
    q0 = rvq.decode(codes[:, :1])
    q01 = rvq.decode(codes)
    level0 = (x - q0).square().mean()
    level1 = ((x - q0) - (q01 - q0)).square().mean()
    assert torch.allclose(rvq(x).commitment_loss, (level0 + level1) / 2, atol=1e-6)


def test_encode_and_decode_agree_with_forward() -> None:
    rvq = _trained(num_levels=3, steps=5)
    x = _points(300, seed=7)
    for k in (1, 2, 3):
        out = rvq(x, k)
        codes = rvq.encode(x, k)
        assert torch.equal(codes, out.codes)
        assert torch.allclose(rvq.decode(codes), out.quantized, atol=1e-6)
    # Prefix property: the first K' levels' codes do not depend on deeper levels.
    assert torch.equal(rvq.encode(x, 3)[:, :2], rvq.encode(x, 2))


def test_bad_arguments_are_refused() -> None:
    rvq = ResidualVectorQuantizer(2, 4, 2)
    with pytest.raises(AssertionError, match="num_levels"):
        rvq(_points(8, seed=0), num_levels=3)
    with pytest.raises(AssertionError, match=r"\[R, D=2\]"):
        rvq(torch.zeros(8, 3))
    with pytest.raises(AssertionError, match="int64"):
        rvq.decode(torch.zeros(8, 1, dtype=torch.int32))
    with pytest.raises(AssertionError, match="update_speed"):
        ResidualVectorQuantizer(2, 4, 2, update_speed=0.0)


class _TwinReplicas:
    """The `CodebookSync` of W replicas that all see this process's batch: sums are W times
    the local value, and the deciding replica's decision is this one's."""

    def __init__(self, world: int) -> None:
        self.world = world
        self.calls: list[str] = []

    def sum_(self, tensor: Tensor) -> None:
        self.calls.append("sum")
        tensor.mul_(self.world)

    def broadcast_(self, tensor: Tensor) -> None:
        self.calls.append("broadcast")


def test_synced_replicas_update_as_one_process_of_their_joint_batch() -> None:
    """W = 2 replicas of batch N move their codebooks as one process of the 2N vectors: the
    counts and sums are summed before the EMA step (Jukebox's all-reduce)."""
    torch.manual_seed(0)
    alone = ResidualVectorQuantizer(2, 8, 2, update_speed=0.3, dead_code_threshold=0.0).train()
    alone(torch.cat([_points(256, seed=0)] * 2))  # initialised from the joint batch
    synced = ResidualVectorQuantizer(2, 8, 2, update_speed=0.3, dead_code_threshold=0.0).train()
    synced.load_state_dict(alone.state_dict())
    synced.sync = sync = _TwinReplicas(2)
    for step in range(1, 6):
        x = _points(256, seed=step)
        joint, replica = alone(torch.cat([x, x])), synced(x)
        torch.testing.assert_close(replica.codes, joint.codes[:256], rtol=0, atol=0)
    for name, buffer in alone.state_dict().items():
        torch.testing.assert_close(synced.state_dict()[name], buffer, msg=name)
    # Per level and call: one all-reduce of the statistics, one broadcast of the restarts.
    assert sync.calls == ["sum", "broadcast"] * 2 * 5
    assert "sync" not in synced.state_dict() and not any(
        "sync" in n for n, _ in synced.named_buffers()
    )


# The post's recipe (nanoGPTaudio codec.py): the expected numbers come from the formulas.


def _fixed_quantizer(commitment: str) -> tuple[ResidualVectorQuantizer, Tensor]:
    """A 3-level quantizer with known codebooks and 6 fixed 2-D latents."""
    rvq = ResidualVectorQuantizer(2, 3, 3, codebooks="post", commitment=commitment).eval()  # type: ignore[arg-type]
    books = torch.tensor(
        [
            [[1.0, 0.0], [-1.0, 0.5], [0.0, 2.0]],
            [[0.2, 0.1], [-0.3, 0.0], [0.0, -0.4]],
            [[0.05, 0.0], [0.0, 0.05], [-0.1, -0.1]],
        ]
    )  # [K, Q, D]
    with torch.no_grad():
        rvq.codebooks.copy_(books)
    x = torch.tensor([[1.3, 0.2], [-0.8, 0.3], [0.1, 1.5], [0.9, -0.5], [-1.2, 1.0], [0.0, 0.0]])
    return rvq, x


def _formula_commitment(rvq: ResidualVectorQuantizer, x: Tensor) -> tuple[list[float], Tensor]:
    """Per-level MSE(residual, nearest entry) and level 0's d/dx, by hand."""
    residual, per_level, grad0 = x.double(), [], None
    for level in range(rvq.num_levels):
        book = rvq.codebooks[level].double()  # [Q, D]
        nearest = book[((residual[:, None] - book[None]) ** 2).sum(-1).argmin(1)]  # [R, D]
        per_level.append(float(((residual - nearest) ** 2).mean()))
        if level == 0:
            grad0 = 2 * (residual - nearest) / residual.numel()
        residual = residual - nearest
    assert grad0 is not None
    return per_level, grad0


def test_the_post_commitment_is_summed_and_reaches_the_encoder_from_level_0_only() -> None:
    rvq, x = _fixed_quantizer("post")
    per_level, grad0 = _formula_commitment(rvq, x)
    latents = x.clone().requires_grad_(True)
    out = rvq(latents)
    assert float(out.commitment_loss.detach()) == pytest.approx(sum(per_level), rel=1e-6)
    out.commitment_loss.backward()
    assert latents.grad is not None
    assert torch.allclose(latents.grad.double(), grad0, atol=1e-7)


def test_the_mean_commitment_averages_and_every_level_reaches_the_encoder() -> None:
    rvq, x = _fixed_quantizer("mean")
    per_level, grad0 = _formula_commitment(rvq, x)
    latents = x.clone().requires_grad_(True)
    out = rvq(latents)
    assert float(out.commitment_loss.detach()) == pytest.approx(sum(per_level) / 3, rel=1e-6)
    out.commitment_loss.backward()
    assert latents.grad is not None
    # Level i's residual is x minus constants: its MSE's gradient reaches x as well.
    assert not torch.allclose(latents.grad.double(), grad0 / 3, atol=1e-7)


def test_post_codebooks_start_kaiming_uniform_with_counts_of_one() -> None:
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(32, 1024, 2, codebooks="post")
    bound = math.sqrt(6 / 32)  # kaiming_uniform_ of [Q, D]: gain sqrt(2) x sqrt(3 / fan_in D)
    assert bool(rvq.initialized.all()) and torch.equal(rvq.cluster_usage, torch.ones(2, 1024))
    assert float(rvq.codebooks.abs().max()) <= bound
    assert float(rvq.codebooks.abs().max()) > 0.95 * bound  # uniform over the whole range
    assert torch.equal(rvq.codebooks, rvq.embedding_sum)
    assert not torch.equal(rvq.codebooks[0], rvq.codebooks[1])


def test_the_post_restarts_one_least_used_code_under_0_1_from_a_raw_latent() -> None:
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(2, 4, 2, update_speed=1e-9, codebooks="post").train()
    assert rvq.dead_code_threshold == 1.0  # the constructor's; build_rvq_codec gives 0.1
    rvq.dead_code_threshold = 0.1
    with torch.no_grad():
        rvq.cluster_usage.copy_(torch.tensor([[5.0, 0.05, 0.02, 3.0], [2.0, 0.2, 0.15, 4.0]]))
        rvq.embedding_sum.copy_(rvq.codebooks * rvq.cluster_usage[..., None])  # same entries
    before = rvq.codebooks.clone()
    x = _points(64, seed=5) * 10  # far from every entry
    out = rvq(x)
    # Level 0: only code 2 (the least used, under 0.1) restarts, not code 1 (also under 0.1).
    assert out.metrics.restarted_codes == [1, 0]
    assert float(rvq.cluster_usage[0, 2]) == pytest.approx(1.0, abs=1e-6)
    entry = rvq.codebooks[0, 2]
    assert bool(((x - entry).abs().max(dim=1).values < 1e-5).any())  # a row of x, not a residual
    assert torch.allclose(rvq.codebooks[0, [0, 1, 3]], before[0, [0, 1, 3]], atol=1e-6)
    # Level 1: its least-used count, 0.15, is not under 0.1: nothing restarts.
    assert torch.allclose(rvq.codebooks[1], before[1], atol=1e-6)
