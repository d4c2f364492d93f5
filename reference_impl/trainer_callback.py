"""transformers integration: apply a blueprint before a Trainer builds its optimizer, and log the meter.

    handle = apply_blueprint(model, bp, budget=0.2, ...)
    meter_cb = MeterCallback(model, handle, metric="eval_accuracy", stopping=StoppingRule(eta=1e-15))
    trainer = Trainer(model=model, args=args, ..., callbacks=[meter_cb])
    trainer.train()

or `blueprint_trainer(model, bp, apply_kwargs, **trainer_kwargs)` which does both. The blueprint
must be applied before the Trainer creates its optimizer: the Trainer then builds AdamW state only
for parameters that require a gradient, i.e. the selection (toggling requires_grad later would keep
state for every weight, the LISA lesson). The callback counts FLOPs per optimizer step, records
an evaluation point (Psi = the chosen eval metric) at each evaluation, adds the meter's figures to
the Trainer's logs, and stops training when the stopping rule fires.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import TrainerCallback

from reference_impl.meter import Meter, StoppingRule


class MeterCallback(TrainerCallback):
    """Meter a Trainer run: FLOPs per step, Psi at each evaluation, dPsi/dGamma in the logs, early stop."""

    def __init__(
        self, model: nn.Module, handle: Any | None = None, metric: str = "eval_loss", higher_is_better: bool | None = None,
        stopping: StoppingRule | None = None,
    ) -> None:
        self.metric = metric
        # Psi must grow with capability: a loss enters negated.
        self.sign = 1.0 if (higher_is_better if higher_is_better is not None else "loss" not in metric) else -1.0
        self.stopping = stopping
        self.meter = Meter(model, handle=handle, metric=metric, callbacks=[stopping] if stopping else None)

    def on_train_begin(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kw: Any) -> None:
        if optimizer is not None:
            self.meter.optimizer = optimizer
        self.meter.start()

    def on_step_end(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kw: Any) -> None:
        if optimizer is not None and self.meter.optimizer is None:
            self.meter.optimizer = optimizer
        self.meter.step(examples=int(args.per_device_train_batch_size * args.gradient_accumulation_steps))

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                    **kw: Any) -> None:
        if not metrics or self.metric not in metrics:
            return
        self.meter.pause()
        point = self.meter.evaluate(self.sign * float(metrics[self.metric]))
        self.meter.resume()
        metrics.update({f"meter_{k}": v for k, v in point.gamma.items()})
        for k, v in point.rate.items():
            if v is not None:
                metrics[f"meter_dpsi_d{k}"] = v
        if self.stopping is not None and self.stopping.should_stop:
            control.should_training_stop = True

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.meter.pause()
        self.meter.close()


def blueprint_trainer(model: nn.Module, blueprint: Any, apply_kwargs: dict[str, Any] | None = None,
                      metric: str = "eval_loss", stopping: StoppingRule | None = None, **trainer_kwargs: Any) -> Any:
    """A transformers Trainer that trains only the blueprint's selection and meters the run.

    Returns the Trainer; `trainer.blueprint_handle` and `trainer.meter` are attached to it.
    """
    from transformers import Trainer

    from reference_impl.apply import apply_blueprint

    handle = apply_blueprint(model, blueprint, **(apply_kwargs or {}))
    callback = MeterCallback(model, handle, metric=metric, stopping=stopping)
    callbacks = [*(trainer_kwargs.pop("callbacks", None) or []), callback]
    trainer = Trainer(model=model, callbacks=callbacks, **trainer_kwargs)
    trainer.blueprint_handle = handle  # type: ignore[attr-defined]
    trainer.meter = callback.meter  # type: ignore[attr-defined]
    return trainer
