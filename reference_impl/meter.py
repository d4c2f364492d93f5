"""Capability per resource: a meter of Psi (task metric) against Gamma (resources), and the stopping rule.

Gamma per evaluation point (all cumulative since the meter started):

* `wall_s`: wall-clock seconds of training (evaluation time excluded);
* `flops`: estimated training FLOPs, split into `flops_forward`, `flops_activation_grad` and
  `flops_weight_grad`. Counted for the matrix products of Linear, Conv and Embedding modules
  (2 x multiply-adds; attention score products, norms and activations are not counted). A module's
  forward cost F is measured by a forward hook on the real batch. Backward costs are credited to
  what a partial update really needs: a weight gradient (F) only for modules with a trainable
  tensor, and an activation gradient (F) only for modules that run after the earliest module
  with a trainable tensor (backward stops there). A module trained in part by the sparse engine
  is credited the share of its weight gradient that backward really forms (the selected rows at
  row granularity; the row blocks holding a selected entry at element granularity), from the
  handle's `weight_grad_fraction`;
* `peak_memory_bytes`: peak resident set size since `start()` on CPU (the kernel's high-water mark,
  VmHWM, reset at `start()` where Linux allows it; the process peak before that is reported as
  `peak_memory_before_start_bytes`), `torch.cuda.max_memory_allocated` since `start()` on CUDA;
* `trainable_state_bytes`: bytes of trainable parameters, their gradients and optimizer state
  actually allocated (from the handle, or from parameters with requires_grad);
* `energy_j`: GPU energy from NVML when pynvml and a GPU are present, else absent.

dPsi/dGamma between consecutive points and since the first point are reported per resource.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

RESOURCES = ("wall_s", "flops", "peak_memory_bytes", "trainable_state_bytes", "energy_j")


def current_rss_bytes() -> int:
    """Resident set size now (psutil when installed, else /proc)."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:  # pragma: no cover - psutil is in the finetune extra
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes() -> int:
    """Peak resident set size of this process's memory image (VmHWM on Linux, else ru_maxrss).

    Linux's ru_maxrss survives execve: a child started by fork+exec from a big parent reports the
    parent's peak. VmHWM belongs to the current memory image and starts afresh at exec.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def release_free_memory() -> None:
    """Hand memory that was freed but kept by the C allocator back to the system (glibc's
    malloc_trim), so that resident memory counts what is alive; a no-op elsewhere."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux: write 5 to /proc/self/clear_refs),
    so that `peak_rss_bytes` measures from now; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


class _Energy:
    """Cumulative GPU energy via NVML (millijoule counter), or nothing."""

    def __init__(self, device: torch.device) -> None:
        self.handle: Any = None
        self.start = 0
        if device.type != "cuda":
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
            self.start = int(pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))
            self._nvml = pynvml
        except Exception:  # no NVML, no permission, or an old GPU: energy is simply not reported
            self.handle = None

    def joules(self) -> float | None:
        if self.handle is None:
            return None
        return (int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)) - self.start) / 1000.0


def _module_flops(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> int:
    """Forward FLOPs (2 x multiply-adds) of one Linear/Conv/Embedding call."""
    out = output[0] if isinstance(output, (tuple, list)) else output
    if not isinstance(out, torch.Tensor):
        return 0
    name = type(module).__name__
    if isinstance(module, nn.Linear) or name == "NonDynamicallyQuantizableLinear":
        return 2 * int(out.numel()) * int(module.in_features)  # type: ignore[arg-type]
    if name == "Conv1D":  # transformers' GPT-2 layer: weight (in, out)
        w = getattr(module, "weight", None)
        return 2 * int(out.numel()) * int(w.shape[0]) if isinstance(w, torch.Tensor) else 0
    if isinstance(module, nn.modules.conv._ConvNd):
        k = 1
        for d in module.kernel_size:
            k *= int(d)
        return 2 * int(out.numel()) * (int(module.in_channels) // int(module.groups)) * k
    if isinstance(module, nn.Embedding):
        return 0  # a lookup; its weight gradient is a scatter-add of the output gradient
    return 0


def _is_counted(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.Embedding, nn.modules.conv._ConvNd)) or type(module).__name__ in (
        "Conv1D", "NonDynamicallyQuantizableLinear",
    )


class FlopCounter:
    """Forward hooks that record, per training step, each counted module's forward FLOPs in call order."""

    def __init__(self, model: nn.Module, weight_grad_fraction: Callable[[nn.Module], float | None] | None = None) -> None:
        self.model = model
        # Share of a module's weight gradient that backward forms (None: all of it, when trainable).
        self.fraction = weight_grad_fraction
        self.calls: list[tuple[nn.Module, int, int]] = []  # (module, forward flops, embedding output size)
        # Counted modules, and every other module owning parameters directly (a LayerNorm...): those
        # cost nothing here but mark where backward must reach. Parametrisation internals are
        # skipped (they run whenever a re-parametrised weight is read).
        self.hooks = [
            m.register_forward_hook(self._hook)
            for name, m in model.named_modules()
            if ".parametrizations." not in f".{name}." and type(m).__name__ not in ("ParametrizationList",)
            and (_is_counted(m) or any(True for _ in m.parameters(recurse=False)))
        ]

    def _hook(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if not torch.is_grad_enabled():
            return  # evaluation forwards are not training cost
        out = output[0] if isinstance(output, (tuple, list)) else output
        emb = int(out.numel()) if isinstance(module, nn.Embedding) and isinstance(out, torch.Tensor) else 0
        self.calls.append((module, _module_flops(module, inputs, output), emb))

    def take(self) -> dict[str, int]:
        """FLOPs of the calls recorded since the last take, split forward / activation-grad / weight-grad."""
        calls, self.calls = self.calls, []
        fwd = sum(f for _, f, _ in calls)
        trainable = [any(p.requires_grad for p in m.parameters()) for m, _, _ in calls]
        first = next((i for i, t in enumerate(trainable) if t), None)
        act = wgrad = 0
        if first is not None:
            for i, ((m, f, emb), t) in enumerate(zip(calls, trainable)):
                if i > first:
                    act += f
                if t:
                    share = self.fraction(m) if self.fraction is not None else None
                    wgrad += round((f if f else emb) * (1.0 if share is None else share))
        return {"forward": fwd, "activation_grad": act, "weight_grad": wgrad}

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks = []


@dataclass
class MeterPoint:
    """One evaluation point: the step, Psi and the cumulative resources."""

    step: int
    psi: float
    gamma: dict[str, float]
    rate: dict[str, float | None] = field(default_factory=dict)  # dPsi/dGamma since the previous point
    metrics: dict[str, float] = field(default_factory=dict)  # further evaluation figures (eval loss...)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"step": self.step, "psi": self.psi, "gamma": self.gamma, "dpsi_dgamma": self.rate}
        if self.metrics:
            out["metrics"] = self.metrics
        return out


class Meter:
    """Records Psi against Gamma during training.

    Call `start()` before the first step, `step()` after every optimizer step, and
    `evaluate(psi)` at each evaluation point (time spent between `pause()`/`resume()`, e.g. the
    evaluation itself, is not counted). `callbacks` are called with (meter, point) after each
    evaluation; a StoppingRule is one.
    """

    def __init__(
        self,
        model: nn.Module,
        handle: Any | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        metric: str = "accuracy",
        device: torch.device | str | None = None,
        callbacks: list[Callable[[Meter, MeterPoint], None]] | None = None,
    ) -> None:
        self.model = model
        self.handle = handle
        self.optimizer = optimizer
        self.metric = metric
        if device is None:
            device = next(model.parameters()).device
        self.device = torch.device(device)
        self.callbacks = list(callbacks or [])
        fraction = getattr(handle, "weight_grad_fraction", None) if handle is not None else None
        self.counter = FlopCounter(model, fraction)
        self._peak_before_start: int | None = None
        self.points: list[MeterPoint] = []
        self.flops = {"forward": 0, "activation_grad": 0, "weight_grad": 0}
        self.steps = 0
        self.examples = 0
        self._elapsed = 0.0
        self._t0: float | None = None
        self._state_peak = 0
        self._energy = _Energy(self.device)

    # -- time -------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the clock, and the peak-memory measurement of the training that follows."""
        if self.device.type == "cuda":
            self._peak_before_start = int(torch.cuda.max_memory_allocated(self.device))
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._peak_before_start = peak_rss_bytes()
            release_free_memory()  # e.g. selection scores freed just before: not training's memory
            reset_peak_rss()
        self._t0 = time.perf_counter()

    def pause(self) -> None:
        if self._t0 is not None:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self._elapsed += time.perf_counter() - self._t0
            self._t0 = None

    def resume(self) -> None:
        if self._t0 is None:
            self._t0 = time.perf_counter()

    @property
    def wall_s(self) -> float:
        running = time.perf_counter() - self._t0 if self._t0 is not None else 0.0
        return self._elapsed + running

    # -- per step ---------------------------------------------------------------------------------
    def step(self, examples: int = 0) -> None:
        """Account one optimizer step (the forward calls since the last step)."""
        for k, v in self.counter.take().items():
            self.flops[k] += v
        self.steps += 1
        self.examples += int(examples)
        self._state_peak = max(self._state_peak, self.trainable_state_bytes())

    def trainable_state_bytes(self) -> int:
        """Parameters + gradients + optimizer state of what is trained, in bytes, as allocated now."""
        if self.handle is not None:
            return int(self.handle.trainable_state_bytes(self.optimizer)["total"])
        total = 0
        for p in self.model.parameters():
            if not p.requires_grad:
                continue
            total += p.numel() * p.element_size()
            if p.grad is not None:
                total += p.grad.numel() * p.grad.element_size()
            if self.optimizer is not None:
                for v in self.optimizer.state.get(p, {}).values():
                    if isinstance(v, torch.Tensor):
                        total += v.numel() * v.element_size()
        return total

    def peak_memory_bytes(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        return peak_rss_bytes()

    def gamma(self) -> dict[str, float]:
        """Cumulative resources now."""
        g: dict[str, float] = {
            "wall_s": self.wall_s,
            "flops": float(sum(self.flops.values())),
            "flops_forward": float(self.flops["forward"]),
            "flops_activation_grad": float(self.flops["activation_grad"]),
            "flops_weight_grad": float(self.flops["weight_grad"]),
            "peak_memory_bytes": float(self.peak_memory_bytes()),
            "trainable_state_bytes": float(max(self._state_peak, self.trainable_state_bytes())),
        }
        e = self._energy.joules()
        if e is not None:
            g["energy_j"] = e
        return g

    # -- evaluation points ------------------------------------------------------------------------
    def evaluate(self, psi: float, metrics: dict[str, float] | None = None) -> MeterPoint:
        """Record Psi now against the resources spent so far (with further `metrics` of the same
        evaluation, e.g. eval loss and perplexity); runs the callbacks."""
        g = self.gamma()
        rate: dict[str, float | None] = {}
        if self.points:
            prev = self.points[-1]
            for k in ("wall_s", "flops", "energy_j"):
                if k in g and k in prev.gamma:
                    d = g[k] - prev.gamma[k]
                    rate[k] = (psi - prev.psi) / d if d > 0 else None
        point = MeterPoint(self.steps, float(psi), g, rate, dict(metrics or {}))
        self.points.append(point)
        for cb in self.callbacks:
            cb(self, point)
        return point

    def report(self) -> dict[str, Any]:
        """JSON-ready report: every point, and dPsi/dGamma from the first to the last point."""
        overall: dict[str, float | None] = {}
        if len(self.points) >= 2:
            a, b = self.points[0], self.points[-1]
            for k in ("wall_s", "flops", "energy_j"):
                if k in a.gamma and k in b.gamma:
                    d = b.gamma[k] - a.gamma[k]
                    overall[k] = (b.psi - a.psi) / d if d > 0 else None
            # Memory is a level, not a flow: gain per byte held.
            for k in ("peak_memory_bytes", "trainable_state_bytes"):
                overall[k] = (b.psi - a.psi) / b.gamma[k] if b.gamma[k] > 0 else None
        return {
            "metric": self.metric,
            "device": self.device.type,
            "steps": self.steps,
            "examples": self.examples,
            "points": [p.to_json() for p in self.points],
            "dpsi_dgamma": overall,
            "peak_memory_before_start_bytes": self._peak_before_start,
            "flop_convention": "2 x multiply-adds of Linear/Conv/Embedding; backward credited per trainable module",
        }

    def close(self) -> None:
        self.counter.remove()


class StoppingRule:
    """Stop when the sliding-window mean of dPsi/dGamma stays below `eta` for `patience` consecutive checks.

    Use as a meter callback; `should_stop` turns True once the rule fires (and stays True).
    `resource` is the Gamma the rate is taken against (default FLOPs).
    """

    def __init__(self, eta: float, window: int = 3, patience: int = 2, resource: str = "flops") -> None:
        if window < 1 or patience < 1:
            raise ValueError("window and patience must be at least 1")
        self.eta = float(eta)
        self.window = int(window)
        self.patience = int(patience)
        self.resource = resource
        self.rates: list[float] = []
        self.below = 0
        self.should_stop = False
        self.stopped_at: int | None = None

    def __call__(self, meter: Meter, point: MeterPoint) -> None:
        rate = point.rate.get(self.resource)
        if rate is None:
            return  # the first point (or no resource spent) gives no rate
        self.rates.append(float(rate))
        recent = self.rates[-self.window :]
        mean = sum(recent) / len(recent)
        self.below = self.below + 1 if mean < self.eta else 0
        if self.below >= self.patience and not self.should_stop:
            self.should_stop = True
            self.stopped_at = point.step
