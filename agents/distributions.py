"""Tanh-squashed Gaussian mixture, the policy class of MB2PO.

MB2PO (Villaflor et al., "Model-Based Behavior-Regularized Policy Optimization", OpenReview wiSgdeJ29ee, §4.2) trains
its AWAC policy as "a tanh squashed GMM with 5 components": AWAC's actor loss only needs ``log π(a|s)`` of dataset
actions, never a reparametrised sample, so the policy may be a mixture.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import distributions as D
from torch.distributions import constraints

__all__ = ["TanhGaussianMixture"]

_LOG_2 = math.log(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class TanhGaussianMixture(D.Distribution):
    r"""Mixture of ``K`` diagonal Gaussians, squashed by tanh and rescaled to the box ``[low, high]``.

    A sample is drawn as ``k ~ Categorical(softmax(logits))``, ``x = loc_k + scale_k * ε`` with ``ε ~ N(0, I)``,
    ``action = center + half_width * tanh(x)`` where ``center = (high + low) / 2``, ``half_width = (high - low) / 2``.
    Its exact log-density is

    .. math::
        \log p(a) = \operatorname{logsumexp}_k \Big[\log w_k + \sum_i \log \mathcal N(x_i; \mu_{k,i}, \sigma_{k,i})\Big]
                    - \sum_i \log(1 - \tanh^2 x_i) - \sum_i \log(\mathrm{half\_width}_i),
        \qquad x = \operatorname{atanh}\big((a - \mathrm{center}) / \mathrm{half\_width}\big),

    with ``w = softmax(logits)`` and the tanh Jacobian computed stably as
    ``log(1 - tanh² x) = 2 (log 2 - x - softplus(-2x))``.

    Args:
        logits: ``(*batch, K)`` unnormalised log-weights of the components.
        loc: ``(*batch, K, A)`` component means, before the tanh.
        scale: ``(*batch, K, A)`` component standard deviations, before the tanh (positive).
        low, high: action bounds, scalars or ``(A,)``, ``low < high``. Default ``[-1, 1]``.
        validate_args: torch's argument validation. Default ``False``: checking the constraints costs several
            reductions (and a device sync on GPU) every time the policy is evaluated; pass ``True`` when debugging.
            With ``True`` the bounds are also checked (``low < high``) and :meth:`log_prob` checks its input lies in
            ``[low, high]``.

    Raises:
        ValueError: on inconsistent shapes (``loc`` and ``scale`` must match, ``logits`` must be ``loc.shape[:-1]``,
            bounds scalar or ``(A,)``), or, with ``validate_args=True``, ``low >= high``.

    The batch shape is ``logits.shape[:-1]`` and the event shape ``(A,)``: :meth:`log_prob` sums over the action
    dimensions and returns ``(*sample, *batch)``.

    Notes:
        * :meth:`rsample` is reparametrised *within the chosen component* (gradients reach ``loc`` and ``scale`` of
          the component each sample came from); the component choice is a discrete draw (Gumbel-max) and passes no
          gradient to ``logits``. AWAC does not differentiate samples, so this is only a convenience.
        * :meth:`log_prob` clamps ``u = (a - center) / half_width`` to ``[-(1 - eps), 1 - eps]`` with
          ``eps = 1e-6`` (:attr:`eps`) before the ``atanh``: dataset actions lying exactly on the bounds (common in
          D4RL-style data, where actions are clipped) get a finite log-density, that of ``u = ±(1 - 1e-6)``,
          i.e. ``x = ±7.25``. ``1 - 1e-6`` is representable in float32 (its spacing near 1 is 6e-8).
        * :attr:`deterministic_sample` is ``center + half_width * tanh(loc_k*)`` with ``k* = argmax logits``, the
          squashed mean of the heaviest component. It is what TorchRL's ``ProbabilisticActor`` returns under
          ``set_exploration_type(ExplorationType.DETERMINISTIC)`` (tensordict's ``_dist_sample`` reads
          ``dist.deterministic_sample``, as for TorchRL's ``TanhNormal``, whose deterministic sample is the squashed
          mean). It is neither the mixture's mean nor, in general, its mode; neither has a closed form, and
          :attr:`mean`, :attr:`mode` and :meth:`entropy` raise ``NotImplementedError`` (as ``TanhNormal``'s mean).

    Reference: Villaflor et al., MB2PO (OpenReview wiSgdeJ29ee), §4.2; the tanh change of variables as in
    Haarnoja et al., SAC, arXiv:1801.01290, Appendix C.

    Examples:
        >>> dist = TanhGaussianMixture(torch.zeros(4, 5), torch.zeros(4, 5, 2), torch.ones(4, 5, 2))
        >>> dist.batch_shape, dist.event_shape
        (torch.Size([4]), torch.Size([2]))
        >>> dist.log_prob(torch.ones(4, 2)).isfinite().all().item()  # actions on the bound
        True
    """

    arg_constraints = {"logits": constraints.real_vector, "loc": constraints.real, "scale": constraints.positive}
    has_rsample = True
    eps = 1e-6
    """``u`` is clamped to ``±(1 - eps)`` before the ``atanh`` in :meth:`log_prob`."""

    def __init__(
        self,
        logits: torch.Tensor,
        loc: torch.Tensor,
        scale: torch.Tensor,
        low: float | torch.Tensor = -1.0,
        high: float | torch.Tensor = 1.0,
        validate_args: bool | None = False,
    ) -> None:
        if loc.ndim < 2 or loc.shape != scale.shape or logits.shape != loc.shape[:-1]:
            raise ValueError(
                "TanhGaussianMixture expects logits (*batch, K), loc and scale (*batch, K, A), got logits "
                f"{tuple(logits.shape)}, loc {tuple(loc.shape)}, scale {tuple(scale.shape)}")
        action_dim = loc.shape[-1]
        low = torch.as_tensor(low, dtype=loc.dtype, device=loc.device)
        high = torch.as_tensor(high, dtype=loc.dtype, device=loc.device)
        for name, bound in (("low", low), ("high", high)):
            if bound.ndim > 1 or (bound.ndim == 1 and bound.shape[0] != action_dim):
                raise ValueError(f"{name} must be a scalar or have shape ({action_dim},), got shape "
                                 f"{tuple(bound.shape)}")
        if validate_args and not bool((high > low).all()):
            raise ValueError(f"high must be > low, got low={low.tolist()}, high={high.tolist()}")
        self.logits, self.loc, self.scale = logits, loc, scale
        self.low, self.high = low.expand(action_dim), high.expand(action_dim)
        self._center, self._half_width = (high + low) / 2, (high - low) / 2
        super().__init__(batch_shape=logits.shape[:-1], event_shape=loc.shape[-1:], validate_args=validate_args)

    @property
    def num_components(self) -> int:
        """``K``."""
        return self.logits.shape[-1]

    @constraints.dependent_property(is_discrete=False, event_dim=1)
    def support(self):
        """The box ``[low, high]`` (closed: :meth:`log_prob` is finite on its faces)."""
        return constraints.independent(constraints.interval(self.low, self.high), 1)

    def expand(self, batch_shape, _instance=None):  # noqa: D102 - torch.distributions.Distribution.expand
        batch_shape = torch.Size(batch_shape)
        new = self._get_checked_instance(TanhGaussianMixture, _instance)
        new.logits = self.logits.expand(*batch_shape, -1)
        new.loc = self.loc.expand(*batch_shape, *self.loc.shape[-2:])
        new.scale = self.scale.expand(*batch_shape, *self.scale.shape[-2:])
        new.low, new.high, new._center, new._half_width = self.low, self.high, self._center, self._half_width
        super(TanhGaussianMixture, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _component_params(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``loc`` and ``scale`` of component ``index`` (``(*sample, *batch)`` integers) -> ``(*sample, *batch, A)``."""
        shape = (*index.shape, 1, self.loc.shape[-1])
        index = index[..., None, None].expand(shape)
        full = (*index.shape[:-2], *self.loc.shape[-2:])
        loc = self.loc.expand(full).gather(-2, index).squeeze(-2)
        scale = self.scale.expand(full).gather(-2, index).squeeze(-2)
        return loc, scale

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> torch.Tensor:
        """Draws ``(*sample_shape, *batch, A)`` actions in ``[low, high]``.

        Reparametrised within the drawn component only: gradients reach that component's ``loc`` and ``scale``,
        not the ``logits`` (the component index is a Gumbel-max draw, which is not differentiable).
        """
        sample_shape = torch.Size(sample_shape)
        logits = self.logits.detach()
        exponential = torch.empty((*sample_shape, *logits.shape), dtype=logits.dtype,
                                  device=logits.device).exponential_()
        index = (logits - exponential.log()).argmax(-1)  # Gumbel-max: P(index = k) = softmax(logits)_k
        loc, scale = self._component_params(index)
        x = loc + scale * torch.randn_like(loc)
        return self._center + self._half_width * torch.tanh(x)

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> torch.Tensor:
        """:meth:`rsample` without gradients."""
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Exact log-density (nats, w.r.t. Lebesgue measure on the box) of actions ``(*sample, *batch, A)``.

        Returns ``(*sample, *batch)``. Actions on or beyond the bounds are evaluated at ``u = ±(1 - eps)``
        (see the class notes); no gradient flows to ``value`` there.
        """
        if self._validate_args:
            self._validate_sample(value)
        u = ((value - self._center) / self._half_width).clamp(-1.0 + self.eps, 1.0 - self.eps)
        x = torch.atanh(u)  # (*sample, *batch, A)
        z = (x.unsqueeze(-2) - self.loc) / self.scale  # (*sample, *batch, K, A)
        log_normal = (-0.5 * z.pow(2) - self.scale.log()).sum(-1) - self.loc.shape[-1] * _HALF_LOG_2PI
        log_base = torch.logsumexp(torch.log_softmax(self.logits, -1) + log_normal, -1)
        log_jacobian = 2.0 * (_LOG_2 - x - F.softplus(-2.0 * x))  # log(1 - tanh(x)^2), stable for large |x|
        return log_base - log_jacobian.sum(-1) - self._half_width.log().expand_as(self.low).sum()

    @property
    def deterministic_sample(self) -> torch.Tensor:
        """``(*batch, A)``: ``center + half_width * tanh(loc_k)`` for the heaviest component ``k = argmax logits``."""
        loc, _ = self._component_params(self.logits.argmax(-1))
        return self._center + self._half_width * torch.tanh(loc)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(batch_shape={tuple(self.batch_shape)}, num_components={self.num_components}, "
                f"action_dim={self.event_shape[0]})")
