"""Per-example gradient norms of every selected module in one forward and one backward pass.

Convention (what a score means). For a batch of B examples, example i's loss L_i is the loss the
model computes for that example alone: the mean over its own target tokens (causal LM, padding
excluded) or its own cross-entropy (sequence classification). The backward pass runs on the
per-example-summed loss sum_i L_i, never on the batch mean, so that each example's gradient is
not scaled by 1/B. For module m with parameters P_m, the squared norm is
``||dL_i/dP_m||^2`` (summed over the module's parameters); the result is a modules x examples
matrix of squared norms, and an example's score is the square root of its column sum: the L2
norm of that example's own loss gradient over the considered modules.

How ("ghost norms", Goodfellow 2015, "Efficient Per-Example Gradient Computations"; the
`per-example-gradient-norm` estimator of SPEC section 5). Forward hooks keep each supported module's input
A_i (T x d) and register a hook on its output that receives G_i (T x p) during the backward:

* Linear (and transformers' Conv1D, a transposed Linear): ||G_i^T A_i||_F^2 either as
  <A_i A_i^T, G_i G_i^T> (Gram form, O(T^2 (d+p))) or by forming G_i^T A_i (explicit form,
  O(T d p)); the Gram form is chosen when 2 T^2 <= d p. Bias: ||sum_t g_t||^2.
* Embedding: sum_{t,s} [x_t == x_s] g_t . g_s, computed by summing the g_t of equal ids per
  example (token positions at `padding_idx` get no gradient in torch and are skipped).
* LayerNorm: per-example gradients formed directly (sum_t g_t * xhat_t and sum_t g_t): they are
  only as large as the hidden size.
* RMSNorm (torch.nn.RMSNorm and Hugging Face's *RMSNorm classes such as LlamaRMSNorm, which
  compute y = w * x / sqrt(mean(x^2) + eps), or (1 + w) * ... as Gemma does: the same gradient
  in w): sum_t g_t * xhat_t with xhat_t = x_t / sqrt(mean(x_t^2) + eps), normalised in float32
  and cast back to the input's dtype, as those classes do.
* A parameter used by several calls (tied input/output embeddings, a layer applied twice): the
  norm of the sum of its contributions, by pairwise Gram inner products.

The backward runs with `torch.autograd.grad` towards a zero scalar leaf (the anchor) tied to every
hooked call: an identity autograd Function on each hooked module's floating-point input (a view,
no copy), or the anchor added to an embedding's output (token ids have no gradient path). So the
pass computes the gradients that flow through the model but no parameter gradients, and each G_i
is reduced to per-example numbers inside its hook and released at once. Hooks sit on the
module's output (or on the 2-D matmul result a Linear reshapes), so an in-place change of the
output downstream (`y += x`) does not hide its gradient. Parameters
of other modules (custom modules, Conv2d...) fall back to torch.func (vmap over grad
of the single-example loss); if that fails they are reported in `unsupported` and left out.

The model is expected in eval mode (dropout off) for deterministic scores; tensors are
batch-first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from reference_impl.losses import model_task

#: A per-example loss: (model, batch) -> tensor of shape (B,), one loss per example.
PerExampleLoss = Callable[[nn.Module, Any], torch.Tensor]

FORMS = ("auto", "gram", "explicit")


# --------------------------------------------------------------------------------------------
# Per-example losses


def _logits(out: Any) -> torch.Tensor:
    logits = out.get("logits") if isinstance(out, Mapping) else getattr(out, "logits", None)
    if logits is None and isinstance(out, torch.Tensor):
        logits = out
    if not isinstance(logits, torch.Tensor):
        raise TypeError("the model returned no logits; pass per_example_loss=")
    return logits


def causal_lm_per_example_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Next-token cross-entropy of each sequence, averaged over its own real target tokens.

    Targets are `labels` (with -100 ignored) when the batch has them, else the input ids with
    padding (attention_mask 0) ignored. A sequence without any target token has loss 0.
    """
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    labels = batch.get("labels")
    if labels is None:
        labels = inputs["input_ids"].clone()
        mask = inputs.get("attention_mask")
        if mask is not None:
            labels = labels.masked_fill(mask == 0, -100)
    logits = _logits(model(**inputs))
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:].to(logits.device)
    tok = nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=-100,
        reduction="none",
    ).view(shift_labels.shape)
    valid = (shift_labels != -100).to(tok.dtype)
    return (tok * valid).sum(dim=1) / valid.sum(dim=1).clamp_min(1.0)


def sequence_classification_per_example_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Each example's classification loss as transformers computes it for that example alone:
    cross-entropy (single-label), mean squared error (num_labels == 1, regression) or mean
    binary cross-entropy over labels (multi-label)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    labels = batch["labels"]
    logits = _logits(model(**inputs)).float()
    config = getattr(model, "config", None)
    problem = getattr(config, "problem_type", None)
    num_labels = int(getattr(config, "num_labels", logits.shape[-1]))
    if problem == "regression" or (problem is None and num_labels == 1):
        return (logits.view(logits.shape[0], -1) - labels.view(labels.shape[0], -1).to(logits.dtype)).pow(2).mean(1)
    if problem == "multi_label_classification":
        return nn.functional.binary_cross_entropy_with_logits(
            logits, labels.to(logits.dtype), reduction="none"
        ).mean(dim=1)
    return nn.functional.cross_entropy(logits.view(-1, num_labels), labels.view(-1), reduction="none")


def default_per_example_loss(model: nn.Module) -> tuple[PerExampleLoss, str]:
    """The per-example form of the model's own loss and its name (causal LM, sequence classification)."""
    task = model_task(model)
    if task == "causal-lm":
        return causal_lm_per_example_loss, "causal-lm-next-token-cross-entropy"
    if task == "sequence-classification":
        return sequence_classification_per_example_loss, "sequence-classification-cross-entropy"
    raise ValueError(f"no per-example loss for a {task} model; pass per_example_loss=")


# --------------------------------------------------------------------------------------------
# Factor algebra: a per-example gradient U_i^T V_i given by its two sides.


@dataclass
class _Side:
    """One side of a gradient factorisation: dense rows (B, T, k) or one-hot ids (B, T) over `size`."""

    dense: torch.Tensor | None = None
    ids: torch.Tensor | None = None
    size: int = 0


def _gram(a: _Side, b: _Side) -> torch.Tensor:
    """(B, T_a, T_b) inner products between the rows of two sides."""
    if a.dense is not None and b.dense is not None:
        return torch.bmm(a.dense, b.dense.transpose(1, 2))
    if a.ids is not None and b.ids is not None:
        return (a.ids[:, :, None] == b.ids[:, None, :]).to(_dtype(a, b))
    if a.ids is not None and b.dense is not None:
        # e_{x_t} . y_s = y_s[x_t]
        idx = a.ids[:, None, :].expand(b.dense.shape[0], b.dense.shape[1], a.ids.shape[1])
        return b.dense.gather(2, idx).transpose(1, 2)
    return _gram(b, a).transpose(1, 2)


def _dtype(a: _Side, b: _Side) -> torch.dtype:
    for s in (a, b):
        if s.dense is not None:
            return s.dense.dtype
    return torch.get_default_dtype()


@dataclass
class _Factor:
    """A per-example gradient contribution U^T V (U: out side, V: in side)."""

    out: _Side
    inp: _Side
    transpose: bool = False  # the parameter is stored as V^T U (Conv1D)

    def materialise(self, shape: torch.Size) -> torch.Tensor:
        """(B, *shape) per-example gradients."""
        u, v = self.out, self.inp
        if u.dense is not None and v.dense is not None:
            g = torch.einsum("btp,btd->bpd", u.dense, v.dense)
        elif u.ids is not None and v.dense is not None:
            b, t = u.ids.shape
            g = v.dense.new_zeros(b, u.size, v.dense.shape[-1])
            g.scatter_add_(1, u.ids[:, :, None].expand(b, t, v.dense.shape[-1]), v.dense)
        else:
            raise ValueError("unsupported factorisation")
        if self.transpose:
            g = g.transpose(1, 2)
        return g.reshape(g.shape[0], *shape)


def _inner(f1: _Factor, f2: _Factor) -> torch.Tensor:
    """Per-example <U1^T V1, U2^T V2>_F = sum_{t,s} (U1_t . U2_s)(V1_t . V2_s)."""
    return (_gram(f1.out, f2.out) * _gram(f1.inp, f2.inp)).sum(dim=(1, 2))


def _embedding_sq_norm(ids: torch.Tensor, g: torch.Tensor, vocab: int) -> torch.Tensor:
    """sum_{t,s}[x_t == x_s] g_t . g_s per example, by summing the rows of equal ids."""
    b = ids.shape[0]
    key = (torch.arange(b, device=ids.device)[:, None] * vocab + ids).reshape(-1)
    uniq, inv = torch.unique(key, return_inverse=True)
    summed = g.new_zeros(uniq.shape[0], g.shape[-1]).index_add_(0, inv, g.reshape(-1, g.shape[-1]))
    return g.new_zeros(b).index_add_(0, torch.div(uniq, vocab, rounding_mode="floor"), summed.pow(2).sum(1))


# --------------------------------------------------------------------------------------------
# Module support


def _is_conv1d(module: nn.Module) -> bool:
    """transformers.pytorch_utils.Conv1D: y = x @ W + b with W of shape (in, out)."""
    return type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None and hasattr(module, "nf")


def _kind(module: nn.Module) -> str | None:
    if isinstance(module, nn.Linear):
        return "linear"
    if _is_conv1d(module):
        return "conv1d"
    if isinstance(module, nn.Embedding):
        if module.max_norm is not None or module.scale_grad_by_freq or module.sparse:
            return None
        return "embedding"
    if isinstance(module, nn.LayerNorm):
        return "layernorm"
    if _is_rmsnorm(module):
        return "rmsnorm"
    return None


def _is_rmsnorm(module: nn.Module) -> bool:
    """torch.nn.RMSNorm, or a Hugging Face-style *RMSNorm: a weight, an epsilon, no bias."""
    if isinstance(module, nn.RMSNorm):
        return isinstance(module.weight, nn.Parameter)
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__.endswith("RMSNorm") and isinstance(weight, nn.Parameter) and weight.dim() >= 1
        and getattr(module, "bias", None) is None
        and isinstance(getattr(module, "variance_epsilon", getattr(module, "eps", None)), float)
    )


def _rms_normalised(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) over the weight's trailing dimensions, computed in float32 (or
    float64) and cast back to x's dtype, as RMSNorm layers compute it before scaling."""
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    dims = tuple(range(-weight.dim(), 0))
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
    xf = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    if eps is None:  # torch.nn.RMSNorm's default
        eps = torch.finfo(x.dtype).eps
    return (xf * torch.rsqrt(xf.pow(2).mean(dim=dims, keepdim=True) + eps)).to(x.dtype)


def _direct_params(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in module._parameters.items() if p is not None]


@dataclass
class GhostNormResult:
    """Per-example squared gradient norms.

    `sq_norms[m, i]` is ||dL_i/dP_m||^2 for module `modules[m]` and example i; `methods[m]` says
    how its weight was handled ("gram", "explicit", "embedding", "direct", "tied-gram", "vmap");
    `unsupported` maps left-out modules to the reason.
    """

    modules: list[str]
    sq_norms: torch.Tensor
    methods: list[str]
    unsupported: dict[str, str] = field(default_factory=dict)

    @property
    def scores(self) -> torch.Tensor:
        """Per-example gradient L2 norm over all considered modules: sqrt of the column sums."""
        return self.sq_norms.sum(dim=0).clamp_min(0).sqrt()


def _considered(
    model: nn.Module, modules: Mapping[str, Sequence[nn.Parameter]] | Iterable[str] | None
) -> dict[str, list[nn.Parameter]]:
    """Module name -> its trainable parameters. Default: every module owning trainable parameters."""
    if isinstance(modules, Mapping):
        return {name: [p for p in ps if p.requires_grad] for name, ps in modules.items()}
    named = dict(model.named_modules())
    if modules is None:
        out: dict[str, list[nn.Parameter]] = {}
        seen: set[int] = set()
        for name, mod in model.named_modules():
            ps = [p for _, p in _direct_params(mod) if p.requires_grad and id(p) not in seen]
            seen.update(id(p) for p in ps)
            if ps:
                out[name] = ps
        return out
    result: dict[str, list[nn.Parameter]] = {}
    for name in modules:
        if name not in named:
            raise KeyError(f"module {name!r} is not in the model")
        result[name] = [p for _, p in _direct_params(named[name]) if p.requires_grad]
    return result


class _Tap(torch.autograd.Function):
    """Identity on a module's floating-point input whose second input is a zero scalar leaf (the
    anchor). It puts the module's output on a path to the tensor the backward pass asks for, so
    `torch.autograd.grad(loss, anchors)` reaches every hooked call (and fires the hook on its
    output) while computing no parameter gradient; nothing flows into the anchor, and the forward
    costs no copy (a view). The input, not the output, is tapped: a module's output may be
    modified in place downstream (`y += x`), which autograd forbids on a custom Function's view;
    Linear, LayerNorm and RMSNorm never modify their input."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class _Capture:
    """Forward/backward hooks that turn each call's (A, G) into per-example contributions.

    Parameters are found through their slot (module, attribute), not their identity: under FSDP2
    a module holds a sharded parameter outside its forward and the gathered one inside it, two
    different objects; results are keyed by the parameter the caller named (`slots`' values).
    """

    def __init__(self, batch_size: int, form: str, slots: dict[tuple[int, str], nn.Parameter]):
        self.b = batch_size
        self.form = form
        self.slots = slots
        self.params = {id(p): p for p in slots.values()}
        self.expected: dict[int, int] = {}  # param id -> number of calls seen in the forward
        self.pending: dict[int, list[Any]] = {}
        self.sq: dict[int, torch.Tensor] = {}
        self.method: dict[int, str] = {}
        self.anchors: dict[torch.device, torch.Tensor] = {}
        self.bad: dict[int, str] = {}
        self.calls: dict[int, int] = {}
        self.handles: list[Any] = []

    def own(self, module: nn.Module, attr: str) -> nn.Parameter | None:
        """The considered parameter in `module`'s slot `attr`, if any."""
        return self.slots.get((id(module), attr))

    def anchor(self, device: torch.device) -> torch.Tensor:
        if device not in self.anchors:
            self.anchors[device] = torch.zeros((), device=device, requires_grad=True)
        return self.anchors[device]

    def pre_hook(self, module: nn.Module, args: tuple[Any, ...]) -> Any:
        """Tap a floating-point first input (see _Tap); integer inputs (token ids) are left alone."""
        if args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
            return (_Tap.apply(args[0], self.anchor(args[0].device)), *args[1:])  # type: ignore[no-untyped-call]
        return None

    def forward_hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        kind = _kind(module)
        ps = [p for a in module._parameters if (p := self.own(module, a)) is not None]
        if kind is None or not ps or not isinstance(output, torch.Tensor) or not args:
            return None
        x = args[0]
        if not isinstance(x, torch.Tensor):
            return None
        expanded = False
        if output.dim() == 0 or output.shape[0] != self.b:
            if output.dim() >= 1 and output.shape[0] == 1 and self.b > 1:
                # A batch-broadcast call (position ids of shape (1, T)): give each example its own copy
                # of the output, so its gradient is per example; the value seen downstream is the same.
                output = output.expand(self.b, *output.shape[1:])
                x = x.expand(self.b, *x.shape[1:])
                expanded = True
            else:
                for p in ps:
                    self.bad[id(p)] = f"output batch dimension {tuple(output.shape)} is not the batch size {self.b}"
                return None
        for p in ps:
            self.calls[id(p)] = self.calls.get(id(p), 0) + 1
        saved = x.detach()

        def hook(grad: torch.Tensor) -> None:
            self._backward(module, kind, saved, grad.detach())

        if expanded or not x.is_floating_point():
            # No tapped float input to reach this call through (token ids): add the anchor to the
            # output instead (a copy, but only for embeddings), and hook the sum.
            out = output + self.anchor(output.device).to(output.dtype)
            out.register_hook(hook)
            return out
        if output._is_view():
            # An in-place change of a view downstream (`y += x`) would reroute the gradient around
            # the view's node and its hook. Linear on (B, T, d) returns a reshaped view of its 2-D
            # matmul result: hook that base (same elements, same order) instead; otherwise hand on
            # a copy.
            base = output._base
            if (
                base is not None and base.grad_fn is not None and base.numel() == output.numel()
                and base.is_contiguous() and output.is_contiguous()
            ):
                shape = output.shape
                base.register_hook(lambda g: hook(g.reshape(shape)))
                return None
            out = output.clone()
            out.register_hook(hook)
            return out
        # A hook on a non-view stays with this value (gets the gradient of the value before any
        # later in-place change), which is the module's output gradient.
        output.register_hook(hook)
        return None

    def _add(self, p: torch.Tensor, contribution: Any, method: str) -> None:
        lst = self.pending.setdefault(id(p), [])
        lst.append(contribution)
        self.method.setdefault(id(p), method)
        if len(lst) == self.expected.get(id(p), 1):
            self._finalise(p)

    def _finalise(self, p: torch.Tensor) -> None:
        lst = self.pending.pop(id(p), [])
        if not lst:
            return
        if len(lst) == 1:
            c = lst[0]
            self.sq[id(p)] = c if isinstance(c, torch.Tensor) and c.dim() == 1 else _explicit_sq(c, p)
            return
        self.method[id(p)] = "tied-gram"
        if all(isinstance(c, _Factor) for c in lst):
            total = None
            for i, c1 in enumerate(lst):
                for j in range(i, len(lst)):
                    term = _inner(c1, lst[j]) * (1.0 if i == j else 2.0)
                    total = term if total is None else total + term
            self.sq[id(p)] = total  # type: ignore[assignment]
            return
        self.method[id(p)] = "tied-explicit"
        dense = None
        for c in lst:
            if isinstance(c, _Factor):
                g = c.materialise(p.shape)
            elif isinstance(c, tuple):
                g = c[1]
            else:
                raise ValueError("a tied parameter mixes norm-only and explicit contributions")
            dense = g if dense is None else dense + g
        assert dense is not None
        self.sq[id(p)] = dense.reshape(dense.shape[0], -1).pow(2).sum(1)

    def _backward(self, module: nn.Module, kind: str, x: torch.Tensor, g: torch.Tensor) -> None:
        if kind in ("linear", "conv1d"):
            self._linear(module, kind, x, g)
        elif kind == "embedding":
            assert isinstance(module, nn.Embedding)
            self._embedding(module, x, g)
        elif kind == "layernorm":
            assert isinstance(module, nn.LayerNorm)
            self._layernorm(module, x, g)
        elif kind == "rmsnorm":
            self._rmsnorm(module, x, g)

    def _linear(self, module: nn.Module, kind: str, x: torch.Tensor, g: torch.Tensor) -> None:
        a = x.reshape(self.b, -1, x.shape[-1])
        gg = g.reshape(self.b, -1, g.shape[-1])
        w = self.own(module, "weight")
        if w is not None:
            tied = self.expected.get(id(w), 1) > 1
            factor = _Factor(_Side(dense=gg), _Side(dense=a), transpose=kind == "conv1d")
            t, d, pdim = a.shape[1], a.shape[2], gg.shape[2]
            form = self.form if self.form != "auto" else ("gram" if 2 * t * t <= d * pdim else "explicit")
            if tied:
                self._add(w, factor, "tied-gram")
            elif t == 1:
                self._add(w, a[:, 0].pow(2).sum(1) * gg[:, 0].pow(2).sum(1), "gram")
            elif form == "gram":
                self._add(w, _inner(factor, factor), "gram")
            else:
                self._add(w, torch.einsum("btp,btd->bpd", gg, a).pow(2).sum(dim=(1, 2)), "explicit")
        bias = self.own(module, "bias")
        if bias is not None:
            self._add_explicit(bias, gg.sum(dim=1))

    def _embedding(self, module: nn.Embedding, x: torch.Tensor, g: torch.Tensor) -> None:
        w = self.own(module, "weight")
        if w is None:
            return
        ids = x.reshape(self.b, -1)
        gg = g.reshape(self.b, ids.shape[1], -1)
        if module.padding_idx is not None:
            # torch gives the padding row no gradient
            gg = gg.masked_fill((ids == module.padding_idx)[:, :, None], 0.0)
        if self.expected.get(id(w), 1) > 1:
            self._add(w, _Factor(_Side(ids=ids, size=module.num_embeddings), _Side(dense=gg)), "tied-gram")
        else:
            self._add(w, _embedding_sq_norm(ids, gg, module.num_embeddings), "embedding")

    def _layernorm(self, module: nn.LayerNorm, x: torch.Tensor, g: torch.Tensor) -> None:
        nd = len(module.normalized_shape)
        dims = tuple(range(-nd, 0))
        xf = x.to(g.dtype)
        mean = xf.mean(dim=dims, keepdim=True)
        var = xf.var(dim=dims, keepdim=True, unbiased=False)
        xhat = (xf - mean) / torch.sqrt(var + module.eps)
        flat = tuple(range(1, g.dim() - nd))
        weight, bias = self.own(module, "weight"), self.own(module, "bias")
        if weight is not None:
            self._add_explicit(weight, (g * xhat).sum(dim=flat) if flat else g * xhat)
        if bias is not None:
            self._add_explicit(bias, g.sum(dim=flat) if flat else g)

    def _rmsnorm(self, module: nn.Module, x: torch.Tensor, g: torch.Tensor) -> None:
        weight = self.own(module, "weight")
        if weight is not None:
            xhat = _rms_normalised(module, x).to(g.dtype)
            flat = tuple(range(1, g.dim() - weight.dim()))
            self._add_explicit(weight, (g * xhat).sum(dim=flat) if flat else g * xhat)

    def _add_explicit(self, p: torch.Tensor, per_example: torch.Tensor) -> None:
        if self.expected.get(id(p), 1) > 1:
            self._add(p, ("explicit", per_example), "direct")
        else:
            self._add(p, per_example.reshape(per_example.shape[0], -1).pow(2).sum(1), "direct")


def _explicit_sq(c: Any, p: torch.Tensor) -> torch.Tensor:
    if isinstance(c, _Factor):
        return _inner(c, c)
    if isinstance(c, tuple):
        g: torch.Tensor = c[1]
        return g.reshape(g.shape[0], -1).pow(2).sum(1)
    raise ValueError("unknown contribution")


def _batch_size(batch: Any) -> int:
    if isinstance(batch, Mapping):
        for key in ("input_ids", "inputs_embeds", "pixel_values", "x"):
            if isinstance(batch.get(key), torch.Tensor):
                return int(batch[key].shape[0])
        for v in batch.values():
            if isinstance(v, torch.Tensor) and v.dim() >= 1:
                return int(v.shape[0])
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return int(batch[0].shape[0])
    raise ValueError("cannot tell the batch size of this batch")


def _vmap_sq_norms(
    model: nn.Module, batch: Any, loss_fn: PerExampleLoss, params: dict[str, nn.Parameter]
) -> dict[str, torch.Tensor]:
    """Per-example squared gradient norms of `params` (by name) with torch.func vmap over grad."""
    from torch.func import functional_call, grad, vmap

    detached = {n: p.detach() for n, p in params.items()}

    def one(pvals: dict[str, torch.Tensor], example: Any) -> torch.Tensor:
        single = torch.utils._pytree.tree_map(
            lambda t: t.unsqueeze(0) if isinstance(t, torch.Tensor) else t, example
        )

        class _Bound(nn.Module):
            def forward(self, *a: Any, **k: Any) -> Any:
                return functional_call(model, pvals, a, k, strict=False)

        bound = _Bound()
        bound.config = getattr(model, "config", None)  # type: ignore[assignment]
        return loss_fn(bound, single).sum()

    grads = vmap(grad(one), in_dims=(None, 0), randomness="same")(detached, batch)
    return {n: g.reshape(g.shape[0], -1).pow(2).sum(1) for n, g in grads.items()}


def per_example_grad_norms(
    model: nn.Module,
    batch: Any,
    per_example_loss: PerExampleLoss | None = None,
    modules: Mapping[str, Sequence[nn.Parameter]] | Iterable[str] | None = None,
    *,
    form: str = "auto",
    fallback: bool = True,
) -> GhostNormResult:
    """Squared per-example gradient norms (modules x examples) of one batch, in one forward and
    one backward pass (see the module docstring for the convention and the method).

    `per_example_loss(model, batch)` returns one loss per example (shape (B,)); default: the
    model's own loss per example (causal LM, sequence classification). `modules`: module names of
    `model`, or a mapping of row names to parameter lists (e.g. blueprint modules); default:
    every module owning trainable parameters. `form`: "auto" (the 2T^2 <= d p rule per Linear),
    or force "gram" / "explicit". `fallback`: use torch.func vmap for parameters of modules the
    hooks do not cover; False reports them as unsupported instead.
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}")
    if per_example_loss is None:
        per_example_loss, _ = default_per_example_loss(model)
    rows = _considered(model, modules)
    wanted: dict[int, nn.Parameter] = {id(p): p for ps in rows.values() for p in ps}
    cap, losses, hookable = _hooked_pass(model, batch, per_example_loss, wanted, form)
    need_fallback = {pid for pid in wanted if pid not in hookable or pid in cap.bad}
    fallback_sq: dict[int, torch.Tensor] = {}
    failed: dict[int, str] = {}
    if need_fallback and fallback:
        names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        by_name = {names[pid]: wanted[pid] for pid in need_fallback if pid in names}
        try:
            got = _vmap_sq_norms(model, batch, per_example_loss, by_name)
            fallback_sq = {id(by_name[n]): v.to(losses.device) for n, v in got.items()}
        except Exception as exc:  # vmap cannot run every model (data-dependent control flow ...)
            failed = {pid: f"torch.func fallback failed: {type(exc).__name__}: {exc}"[:300] for pid in need_fallback}
    elif need_fallback:
        failed = {pid: cap.bad.get(pid, "no ghost-norm rule for this module type") for pid in need_fallback}
    return _rows(rows, cap, fallback_sq, failed, cap.b, losses.device)


def _hooked_pass(
    model: nn.Module, batch: Any, loss_fn: PerExampleLoss, wanted: dict[int, nn.Parameter], form: str
) -> tuple[_Capture, torch.Tensor, set[int]]:
    """The one forward and backward with the hooks on every module whose parameters have a
    ghost-norm rule; returns the capture, the per-example losses and the hooked parameter ids."""
    b = _batch_size(batch)
    holders: dict[int, list[nn.Module]] = {}  # parameter -> the modules holding it directly
    for mod in model.modules():
        for _, p in _direct_params(mod):
            if id(p) in wanted:
                holders.setdefault(id(p), []).append(mod)
    hookable = {pid for pid, mods in holders.items() if all(_kind(m) is not None for m in mods)}
    slots = {
        (id(mod), attr): p for mod in model.modules() for attr, p in mod._parameters.items()
        if p is not None and id(p) in hookable
    }
    cap = _Capture(b, form, slots)
    hooked = {id(m): m for pid in hookable for m in holders[pid]}
    for m in hooked.values():
        cap.handles.append(m.register_forward_pre_hook(cap.pre_hook))
        cap.handles.append(m.register_forward_hook(cap.forward_hook))
    try:
        losses = loss_fn(model, batch)
        if losses.dim() != 1 or losses.shape[0] != b:
            raise ValueError(f"per_example_loss returned shape {tuple(losses.shape)}, expected ({b},)")
        cap.expected = dict(cap.calls)
        anchors = list(cap.anchors.values())
        if anchors:
            torch.autograd.grad(losses.sum(), anchors, allow_unused=True)
        for pid in list(cap.pending):  # calls whose output did not reach the loss
            cap._finalise(wanted[pid])
    finally:
        for h in cap.handles:
            h.remove()
    return cap, losses, hookable


def _rows(
    rows: dict[str, list[nn.Parameter]], cap: _Capture, fallback_sq: dict[int, torch.Tensor],
    failed: dict[int, str], b: int, device: torch.device,
) -> GhostNormResult:
    """One row of squared norms per considered module (the sum over its parameters), with how its
    weight was handled; modules with a failed parameter go to `unsupported`."""
    out_rows: list[torch.Tensor] = []
    names_out: list[str] = []
    methods: list[str] = []
    unsupported: dict[str, str] = {}
    for name, ps in rows.items():
        bad = [failed[id(p)] for p in ps if id(p) in failed]
        if bad:
            unsupported[name] = bad[0]
            continue
        total = torch.zeros(b, dtype=torch.float64 if _any_f64(ps) else torch.float32, device=device)
        method: str | None = None
        for p in ps:
            how: str
            val: torch.Tensor | None
            if id(p) in fallback_sq:
                val, how = fallback_sq[id(p)], "vmap"
            else:
                val, how = cap.sq.get(id(p)), cap.method.get(id(p), "direct")
            if val is None:  # never reached by the loss
                val = torch.zeros(b, device=device)
            total = total + val.to(total.dtype)
            if method is None or p.dim() >= 2:
                method = how
        out_rows.append(total)
        names_out.append(name)
        methods.append(method or "none")
    sq = torch.stack(out_rows) if out_rows else torch.zeros(0, b, device=device)
    return GhostNormResult(names_out, sq.detach(), methods, unsupported)


def _any_f64(ps: Sequence[nn.Parameter]) -> bool:
    return any(p.dtype == torch.float64 for p in ps)


def per_example_grad_norms_loop(
    model: nn.Module,
    examples: Iterable[Any],
    per_example_loss: PerExampleLoss | None = None,
    modules: Mapping[str, Sequence[nn.Parameter]] | Iterable[str] | None = None,
) -> torch.Tensor:
    """The naive reference: one forward and backward per example (batch of one), plain autograd.
    Returns the modules x examples matrix of squared norms (rows in the order of `modules`)."""
    if per_example_loss is None:
        per_example_loss, _ = default_per_example_loss(model)
    rows = _considered(model, modules)
    cols: list[torch.Tensor] = []
    for ex in examples:
        loss = per_example_loss(model, ex).sum()
        flat = [p for ps in rows.values() for p in ps]
        grads = torch.autograd.grad(loss, flat, allow_unused=True)
        it = iter(grads)
        col = []
        for ps in rows.values():
            s = torch.zeros((), dtype=torch.float64)
            for _ in ps:
                g = next(it)
                if g is not None:
                    s = s + g.detach().double().pow(2).sum().cpu()
            col.append(s)
        cols.append(torch.stack(col) if col else torch.zeros(0, dtype=torch.float64))
    return torch.stack(cols, dim=1) if cols else torch.zeros(len(rows), 0, dtype=torch.float64)
