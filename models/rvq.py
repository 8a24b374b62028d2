"""Residual vector quantization (RVQ) with k-means-style EMA codebooks.

Shape symbols (the legend of `codecflow.models`): R vectors quantised at once, D width (the
embedding dim), Q codes per level (codebook size), K levels of the quantizer (`num_levels`), K'
levels used in one call (the first K' of the K).

The blog post "Neural audio codecs: how to get audio into LLMs" (Kyutai, 2025) builds RVQ up from
one k-means-like codebook: each of K levels quantizes what the levels before it left over (the
residual), so Q^K' combinations are reachable with K' * Q stored vectors (SoundStream, Zeghidour
et al., 2021, section 3.2, algorithm 1). Following the post, which follows Jukebox (Dhariwal et
al., 2020; jukebox/vqvae/bottleneck.py), codebooks are not learned by gradient descent but kept
as exponential moving averages of the vectors assigned to each code, as in VQ-VAE's EMA variant
(van den Oord et al., 2017, appendix A.1) and VQ-VAE-2 (Razavi et al., 2019):

    count_c <- decay * count_c + (1 - decay) * |{i: code_i = c}|
    sum_c   <- decay * sum_c   + (1 - decay) * sum_{i: code_i = c} x_i
    entry_c  = sum_c / smoothed(count)_c,  decay = 1 - update_speed,

with Laplace smoothing of the counts (smoothed(n)_c = (n_c + eps) / (sum n + Q eps) * sum n) as in
Sonnet's `VectorQuantizerEMA`, SoundStream and encodec (encodec/quantization/core_vq.py). A code
whose EMA count falls below `dead_code_threshold` (Jukebox's `revival_threshold`, 1.0) is dead and
is teleported to a random vector of the current batch (Jukebox `update_k`; encodec
`expire_codes_`). Codebooks are initialised from random vectors of the first training batch
(Jukebox `init_k`; no k-means++).

Codebooks and their statistics are float32 buffers: AdamW never sees them, they change only in
training mode, and they travel in `state_dict`. Under data parallelism the replicas agree through
an injected `CodebookSync` (`quantizer.sync`; None, the default, is one process: this module never
imports torch.distributed). Each call's batch counts and sums are summed over the replicas before
the EMA step, so n replicas of batch R update the codebooks as one process of batch n * R would;
which codes are dead, and the batch vectors they restart from, are decided by one replica and
broadcast, as is the initialisation from data. Jukebox's bottleneck.py `update_k` does both
(`dist.all_reduce` of `_k_sum` and `_k_elem`, `dist.broadcast(_k_rand, 0)`); audiocraft's
core_vq.py broadcasts its buffers after `init_embed_` and `expire_codes_`.

Gradients reach the input through the straight-through estimator (van den Oord et al., 2017,
section 3.1) applied once to the sum of all levels, and through the commitment loss, the MSE
between each level's input (the residual) and its stop-gradient entry.

Two recipes, each chosen per quantizer (`codebooks`, `commitment`); the post's code is
kyutai-labs/nanoGPTaudio codec.py (the `restart_unused_codes` version, after cbd36aa):

- `codebooks="post"`: each level's EMA sum starts kaiming-uniform (`torch.nn.init.
  kaiming_uniform_` of a [Q, D] tensor, bound sqrt(6 / D)) with counts of 1, entries are
  sum / max(count, 1e-5) (no Laplace smoothing), and in training, BEFORE quantizing, each level
  used restarts at most ONE code: its least-used, if that count is under `dead_code_threshold`
  (the post's 0.1), becomes a random row of the raw latents (the encoder's output, the same `x`
  for every level, not the residual) with a count of 1.0 (`VectorQuantizer.restart_unused_codes`,
  called from `Codec.forward` on `flat_embeddings`).
- `codebooks="data"` (Jukebox's and encodec's rules, this module's first recipe): entries start
  as random vectors of the first batch, counts are Laplace-smoothed, and AFTER each EMA step every
  code under `dead_code_threshold` (1.0) jumps to a random residual of the batch. Kept because
  it uses its codebooks far better in short runs: bench/codec_recipe.py (the post's codec
  narrowed to 16 channels, 3 stages, 8 x 64 codes, 3 000 CPU steps, held-out speech), the whole
  earlier recipe against the post's: codebook entropy 0.90 against 0.35 of log Q, no code unused
  against 76 %, SI-SDR 14.2 against 5.9 dB and mel L1 0.22 against 0.41 at 8 levels, while the
  post's recipe reaches the lower post spectral loss (0.20 against 0.37), the loss it trains on.
- `commitment="post"`: the per-level losses are SUMMED, and only level 0's reaches the encoder:
  the post applies the straight-through estimator per level, so level i > 0 sees
  x - (x + const), whose gradient to x is 0. 8 levels weigh 8x one level.
- `commitment="mean"`: averaged over the levels used, every level's residual reaching the
  encoder, as encodec and moshi do, so its scale and the weight of 0.02 do not depend on K'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CODEBOOK_RECIPES",
    "COMMITMENT_RECIPES",
    "CodebookRecipe",
    "CodebookSync",
    "CommitmentRecipe",
    "RVQMetrics",
    "RVQOutput",
    "ResidualVectorQuantizer",
]

#: How codebooks start and restart: the post's rules, or data init and dead-code teleports.
CodebookRecipe = Literal["post", "data"]
CODEBOOK_RECIPES: tuple[CodebookRecipe, ...] = ("post", "data")
#: How the levels' commitment losses combine: the post's sum (level 0 to the encoder), or a mean.
CommitmentRecipe = Literal["post", "mean"]
COMMITMENT_RECIPES: tuple[CommitmentRecipe, ...] = ("post", "mean")
# The count a restarted code gets in the post (codec.py restart_unused_codes: new_usage = 1.0).
_POST_RESTART_USAGE = 1.0
# The floor of the counts in the post's entries (codec.py VectorQuantizer.codebook: clamp 1e-5).
_POST_USAGE_FLOOR = 1e-5


class CodebookSync(Protocol):
    """How the replicas of a data-parallel run keep identical codebooks (all of them call the
    same methods in the same order, in place). `tasks.train.distributed` implements it with
    torch.distributed; models/ only sees this protocol."""

    def sum_(self, tensor: Tensor) -> None:
        """Replace `tensor` by its sum over the replicas (an all-reduce)."""

    def broadcast_(self, tensor: Tensor) -> None:
        """Replace `tensor` by the deciding replica's (rank 0's) value."""


@dataclass
class RVQMetrics:
    """Per-level codebook health of one call, one entry per level used (K' entries)."""

    # Entropy of the batch's code histogram, in bits: log2(Q) when every code is used equally,
    # 0 when one code takes everything (Jukebox logs the same quantity in nats).
    per_level_entropy_bits: list[float]
    # Fraction of the Q codes whose EMA count is below the dead-code threshold; in training mode
    # with `codebooks="data"` these are the codes teleported by this call.
    dead_code_fraction: list[float]
    # Codes restarted by this call (training mode): teleported dead codes ("data"), or 0 or 1
    # ("post"); all 0 in eval mode.
    restarted_codes: list[int]


@dataclass
class RVQOutput:
    """What `ResidualVectorQuantizer.forward` returns."""

    quantized: Tensor  # [R, D], the sum of the K' levels, straight-through to the input
    codes: Tensor  # int64 [R, K']
    commitment_loss: Tensor  # scalar: MSE(residual, sg(entry)) summed ("post") or averaged
    metrics: RVQMetrics


class ResidualVectorQuantizer(nn.Module):
    """A K-level residual vector quantizer of `[R, D]` embeddings with EMA codebooks.

    Args:
        dim: D, the embedding dimension.
        codebook_size: Q, entries per level.
        num_levels: K, the number of residual levels.
        update_speed: 1 - decay of the moving averages, in (0, 1]; 0.01 is Jukebox's l_mu 0.99.
            1.0 makes each training call one k-means (Lloyd) step on the batch.
        dead_code_threshold: a code whose EMA count (vectors per batch, averaged) falls below
            this is restarted; Jukebox's 1.0 by default (the post's 0.1 with `codebooks="post"`).
            Keep it well below R / Q. With "data" a teleported code restarts with a count equal
            to the threshold, so it is teleported again at once unless it catches vectors.
        epsilon: the Laplace smoothing constant (1e-5, as Sonnet and encodec; "data" only).
        codebooks: "post" or "data", how codebooks start and restart (the module says both).
        commitment: "post" (summed, level 0 to the encoder) or "mean" (the module says both).
    """

    # Buffers, declared for type checkers (registered in __init__).
    codebooks: Tensor  # float32 [K, Q, D], the entries (sum / smoothed count, kept up to date)
    cluster_usage: Tensor  # float32 [K, Q], EMA of the number of vectors assigned per call
    embedding_sum: Tensor  # float32 [K, Q, D], EMA of the sum of the vectors assigned
    initialized: Tensor  # bool [K], whether each level's codebook was set from data

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        num_levels: int,
        update_speed: float = 0.01,
        dead_code_threshold: float = 1.0,
        epsilon: float = 1e-5,
        codebooks: CodebookRecipe = "data",
        commitment: CommitmentRecipe = "mean",
    ) -> None:
        super().__init__()
        assert codebooks in CODEBOOK_RECIPES, f"codebooks must be one of {CODEBOOK_RECIPES}"
        assert commitment in COMMITMENT_RECIPES, f"commitment must be one of {COMMITMENT_RECIPES}"
        assert min(dim, codebook_size, num_levels) >= 1, (
            f"sizes must be positive: dim {dim}, codebook_size {codebook_size}, "
            f"num_levels {num_levels}"
        )
        assert 0.0 < update_speed <= 1.0, f"update_speed must be in (0, 1], got {update_speed}"
        assert dead_code_threshold >= 0.0, (
            f"dead_code_threshold must be >= 0, got {dead_code_threshold}"
        )
        assert epsilon > 0.0, f"epsilon must be positive, got {epsilon}"
        self.dim = dim
        self.codebook_size = codebook_size
        self.num_levels = num_levels
        self.update_speed = update_speed
        self.dead_code_threshold = dead_code_threshold
        self.epsilon = epsilon
        self.codebook_recipe: CodebookRecipe = codebooks
        self.commitment_recipe: CommitmentRecipe = commitment
        shape = (num_levels, codebook_size, dim)  # [K, Q, D]
        self.register_buffer("codebooks", torch.zeros(shape))
        self.register_buffer("cluster_usage", torch.ones(num_levels, codebook_size))  # [K, Q]
        self.register_buffer("embedding_sum", torch.zeros(shape))
        self.register_buffer("initialized", torch.zeros(num_levels, dtype=torch.bool))
        #: The replicas' agreement under data parallelism; None: this process alone.
        self.sync: CodebookSync | None = None
        if codebooks == "post":
            self._post_init()

    @torch.no_grad()
    def _post_init(self) -> None:
        """The post's start: kaiming-uniform sums, counts of 1 (codec.py VectorQuantizer)."""
        for level in range(self.num_levels):
            # kaiming_uniform_ of [Q, D]: fan_in D, bound sqrt(6 / D), from the global generator
            # (seeded by the trainer, so every rank starts from the same codebooks).
            nn.init.kaiming_uniform_(self.embedding_sum[level])
        self.codebooks.copy_(self.embedding_sum / self.cluster_usage[..., None])  # counts are 1
        self.initialized.fill_(True)

    @property
    def decay(self) -> float:
        """The moving averages' decay, 1 - update_speed."""
        return 1.0 - self.update_speed

    def _levels_used(self, num_levels: int | None) -> int:
        k = self.num_levels if num_levels is None else num_levels
        assert 1 <= k <= self.num_levels, (
            f"num_levels (K') must be in [1, K = {self.num_levels}], got {num_levels}"
        )
        return k

    def _check_input(self, x: Tensor) -> None:
        assert x.ndim == 2 and x.shape[1] == self.dim, (
            f"x must be [R, D={self.dim}], got shape {tuple(x.shape)}"
        )
        assert x.shape[0] >= 1, f"x must hold at least one vector, got shape {tuple(x.shape)}"
        assert x.is_floating_point(), f"x must be floating point, got {x.dtype}"

    def _nearest(self, r: Tensor, level: int) -> Tensor:
        """float32 `[R, D]` -> int64 `[R]`, the index of the nearest entry (squared L2)."""
        book = self.codebooks[level]  # [Q, D]
        # Autocast would run the matmul in 16 bits and pick wrong neighbours: keep float32.
        with torch.autocast(device_type=r.device.type, enabled=False):
            # |r - c|^2 = |r|^2 - 2 r.c + |c|^2; |r|^2 is the same for every c and is dropped.
            dist = (book * book).sum(dim=1)[None, :] - 2.0 * (r.float() @ book.t())  # [R, Q]
        return dist.argmin(dim=1)  # [R]

    @torch.no_grad()
    def _init_level(self, r: Tensor, level: int) -> None:
        """Set level `level`'s entries to random vectors of `r` (float32 `[R, D]`)."""
        n, c = r.shape[0], self.codebook_size
        if n >= c:
            vectors = r[torch.randperm(n, device=r.device)[:c]]  # [Q, D]
        else:
            # Too few vectors: repeat them with a little noise so entries differ (Jukebox _tile).
            vectors = r[torch.randint(0, n, (c,), device=r.device)]  # [Q, D]
            vectors = vectors + torch.randn_like(vectors) * 0.01 * r.std().clamp_min(1e-6)
        total = float(n)
        if self.sync is not None:
            # One replica's vectors for all (audiocraft init_embed_), the count of all batches.
            self.sync.broadcast_(vectors)
            count = torch.tensor([total], device=r.device)
            self.sync.sum_(count)
            total = float(count.item())
        # Start each count at the uniform share R / Q (Jukebox restore_k's expected usage), at
        # least the threshold so that no code starts dead.
        usage = max(total / c, self.dead_code_threshold)
        self.codebooks[level] = vectors
        self.cluster_usage[level] = usage
        self.embedding_sum[level] = vectors * usage
        self.initialized[level] = True

    @torch.no_grad()
    def _update_level(self, r: Tensor, codes: Tensor, level: int) -> Tensor:
        """One EMA step of level `level` on `r` (float32 `[R, D]`) assigned to `codes` (`[R]`).

        Returns the bool `[Q]` mask of the codes found dead (and teleported).
        """
        c = self.codebook_size
        counts = torch.bincount(codes, minlength=c).to(r.dtype)  # [Q]
        sums = torch.zeros_like(self.embedding_sum[level]).index_add_(0, codes, r)  # [Q, D]
        if self.sync is not None:
            # Every replica's statistics, in one all-reduce (Jukebox: all_reduce of both).
            stats = torch.cat([counts[:, None], sums], dim=1)  # [Q, 1 + D]
            self.sync.sum_(stats)
            counts, sums = stats[:, 0], stats[:, 1:]  # [Q], [Q, D]
        usage = self.cluster_usage[level]  # [Q], a view: updated in place
        emb_sum = self.embedding_sum[level]  # [Q, D], a view
        usage.mul_(self.decay).add_(counts, alpha=self.update_speed)
        emb_sum.mul_(self.decay).add_(sums, alpha=self.update_speed)
        if self.codebook_recipe == "post":
            # codec.py VectorQuantizer.codebook: sum / count.clamp(min=1e-5); restarts come
            # before quantizing (`_restart_least_used`), not here.
            self.codebooks[level] = emb_sum / usage.clamp_min(_POST_USAGE_FLOOR)[:, None]
            return torch.zeros_like(usage, dtype=torch.bool)
        # Laplace smoothing keeps the division finite for codes with (nearly) zero counts.
        total = usage.sum()
        smoothed = (usage + self.epsilon) / (total + c * self.epsilon) * total  # [Q]
        book = emb_sum / smoothed[:, None]  # [Q, D]

        # Dead codes jump to random vectors of this batch; always drawing the Q candidates
        # (cheap) avoids a device sync on "are there any?".
        dead = usage < self.dead_code_threshold  # [Q]
        candidates = r[torch.randint(0, r.shape[0], (c,), device=r.device)]  # [Q, D]
        if self.sync is not None:
            # Decided by one replica, from its batch, and applied by all (audiocraft
            # expire_codes_ broadcasts the same way): no replica restarts a code on its own.
            decision = torch.cat([dead[:, None].to(r.dtype), candidates], dim=1)  # [Q, 1 + D]
            self.sync.broadcast_(decision)
            dead, candidates = decision[:, 0] > 0.5, decision[:, 1:]  # [Q], [Q, D]
        self.codebooks[level] = torch.where(dead[:, None], candidates, book)
        emb_sum.copy_(torch.where(dead[:, None], candidates * self.dead_code_threshold, emb_sum))
        usage.copy_(torch.where(dead, torch.full_like(usage, self.dead_code_threshold), usage))
        return dead

    @torch.no_grad()
    def _restart_least_used(self, x: Tensor, level: int) -> Tensor:
        """The post's restart of level `level`: its least-used code, if its count is under the
        threshold, becomes a random row of `x` (float32 `[R, D]`, the raw latents) with a count
        of 1.0 (codec.py `VectorQuantizer.restart_unused_codes`). Returns a bool scalar: did it.

        Without a device sync (no `if` on a GPU value): the row is always drawn and the restart
        applied through `torch.where`.
        """
        usage = self.cluster_usage[level]  # [Q], a view
        value, index = usage.min(dim=0)
        candidate = x[torch.randint(0, x.shape[0], (1,), device=x.device)][0]  # [D]
        if self.sync is not None:
            # The counts agree on every replica (their statistics are summed); the row is the
            # deciding replica's, as for the "data" teleports.
            self.sync.broadcast_(candidate)
        restart = value < self.dead_code_threshold  # bool scalar
        new_usage = torch.full_like(value, _POST_RESTART_USAGE)
        usage[index] = torch.where(restart, new_usage, value)
        row = torch.where(
            restart, candidate * _POST_RESTART_USAGE, self.embedding_sum[level, index]
        )
        self.embedding_sum[level, index] = row
        self.codebooks[level, index] = torch.where(restart, candidate, self.codebooks[level, index])
        return restart

    def forward(self, x: Tensor, num_levels: int | None = None) -> RVQOutput:
        """Quantize `x` with the first K' levels; in training mode, also update them.

        In training mode, with `codebooks="data"`, a level not initialised yet is first set from
        this batch, and after quantizing (with the entries as they were) each used level takes
        one EMA step and teleports its dead codes; with "post", each used level first restarts
        its least-used code if it is dead, then quantizes and takes one EMA step. In eval mode
        nothing changes.

        Args:
            x: float `[R, D]` embeddings.
            num_levels: K', how many levels to use (the first K'); all K by default.

        Returns:
            `RVQOutput`: quantized `[R, D]` (x's dtype; its gradient is passed straight to `x`),
            int64 codes `[R, K']`, the commitment loss (summed or averaged over levels, as
            `commitment` says), and metrics.
        """
        self._check_input(x)
        k = self._levels_used(num_levels)
        xf = x.float()  # codebooks are float32; quantize in float32 under autocast too
        initialized = self.initialized[:k].tolist() if self.training else [True] * k
        restarts = [torch.zeros((), dtype=torch.bool, device=x.device)] * k
        if self.training and self.codebook_recipe == "post":
            # Before quantizing, from the raw latents (codec.py Codec.forward).
            restarts = [self._restart_least_used(xf.detach(), level) for level in range(k)]

        residual = xf  # [R, D]
        quantized = torch.zeros_like(xf)  # [R, D]
        codes_list: list[Tensor] = []
        losses: list[Tensor] = []
        stats: list[Tensor] = []  # per level: entropy, dead fraction, codes restarted
        for level in range(k):
            if not initialized[level]:
                self._init_level(residual.detach(), level)
            codes = self._nearest(residual.detach(), level)  # [R]
            q = self.codebooks[level][codes]  # [R, D], no gradient: codebooks are buffers
            # Commitment loss (VQ-VAE's beta term): pull the residual towards its entry. In the
            # post only level 0's input is the encoder's; deeper residuals reach it through none.
            post_deeper = level > 0 and self.commitment_recipe == "post"
            committed = residual.detach() if post_deeper else residual
            losses.append(F.mse_loss(committed, q))
            stats.append(self._level_stats(residual.detach(), codes, level, restarts[level]))
            codes_list.append(codes)
            quantized = quantized + q
            # The next level quantizes what is left; q is a constant, so the residual's
            # gradient (commitment loss of deeper levels, "mean") still reaches x.
            residual = residual - q

        # Straight-through estimator over the whole stack: the forward value is the sum of the
        # entries, the backward is the identity to x (moshi's ResidualVectorQuantization does
        # the same; the post's per-level estimator gives the same identity, see the module).
        out = xf + (quantized - xf).detach()  # [R, D]
        table = torch.stack(stats).tolist()  # [K', 3]
        commitment = torch.stack(losses)  # [K']
        return RVQOutput(
            quantized=out.to(x.dtype),
            codes=torch.stack(codes_list, dim=1),  # [R, K']
            commitment_loss=(
                commitment.sum() if self.commitment_recipe == "post" else commitment.mean()
            ),
            metrics=RVQMetrics(
                per_level_entropy_bits=[row[0] for row in table],
                dead_code_fraction=[row[1] for row in table],
                restarted_codes=[int(row[2]) for row in table],
            ),
        )

    def _level_stats(self, r: Tensor, codes: Tensor, level: int, restarted: Tensor) -> Tensor:
        """float32 `[3]`: the batch's code entropy in bits, the dead fraction, the codes
        restarted; in training mode, after this level's EMA step (and "data" teleports)."""
        counts = torch.bincount(codes, minlength=self.codebook_size).float()  # [Q]
        n_restarted = restarted.long()  # the post's restart, before quantizing
        if self.training:
            teleported = self._update_level(r, codes, level)  # [Q], all False with "post"
            n_restarted = n_restarted + teleported.sum()
        # "data" in training: what was just teleported (the counts now sit at the threshold).
        data_training = self.training and self.codebook_recipe == "data"
        dead = teleported if data_training else self.cluster_usage[level] < self.dead_code_threshold
        dead_fraction = dead.float().mean()
        return torch.stack([_entropy_bits(counts), dead_fraction, n_restarted.float()])

    @torch.no_grad()
    def encode(self, x: Tensor, num_levels: int | None = None) -> Tensor:
        """float `[R, D]` -> int64 `[R, K']` codes of the first K' levels (no update).

        Equal to `forward(x, num_levels).codes` in eval mode.
        """
        self._check_input(x)
        k = self._levels_used(num_levels)
        residual = x.float()  # [R, D]
        codes_list: list[Tensor] = []
        for level in range(k):
            codes = self._nearest(residual, level)  # [R]
            residual = residual - self.codebooks[level][codes]
            codes_list.append(codes)
        return torch.stack(codes_list, dim=1)  # [R, K']

    def decode(self, codes: Tensor) -> Tensor:
        """int64 `[R, K']` codes of the first K' levels -> float32 `[R, D]`, the sum of their
        entries."""
        assert codes.ndim == 2 and 1 <= codes.shape[1] <= self.num_levels, (
            f"codes must be [R, K'] with 1 <= K' <= {self.num_levels}, "
            f"got shape {tuple(codes.shape)}"
        )
        assert codes.dtype == torch.int64, f"codes must be int64, got {codes.dtype}"
        k = codes.shape[1]
        # Gather entry codes[n, l] of level l: [R, K', D], then sum the levels.
        levels = torch.arange(k, device=codes.device)  # [K']
        return self.codebooks[levels[None, :], codes].sum(dim=1)  # [R, D]


def _entropy_bits(counts: Tensor) -> Tensor:
    """Entropy in bits of the distribution proportional to `counts` (`[Q]`), a scalar."""
    p = counts / counts.sum().clamp_min(1.0)  # [Q]
    # entr(p) = -p ln p, exactly 0 at p = 0.
    return torch.special.entr(p).sum() / math.log(2.0)
