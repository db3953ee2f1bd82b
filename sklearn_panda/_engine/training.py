"""The torch training loop shared by every adaptation: steps, clipping, callbacks."""

import math

import torch


def run_sgd(
    parameters,
    step_loss,
    n_steps,
    *,
    learning_rate,
    momentum,
    weight_decay,
    clip_norm,
    callbacks=(),
    scale_gradients=False,
):
    """Run ``n_steps`` SGD steps of ``step_loss`` on ``parameters``.

    Parameters
    ----------
    parameters : list of Tensors
        Trainable tensors.
    step_loss : callable
        ``step_loss(step) -> (loss, details)``: the loss tensor of one
        mini-batch and a dict of floats to report.
    n_steps : int
    learning_rate, momentum, weight_decay : float
        SGD settings (the paper: 1e-2, 0.9, 5e-5).
    clip_norm : float or None
        Gradient-norm clipping (the paper: 1e-3).
    callbacks : sequence of callables
        Each is called as ``callback(step, loss_value, details)`` after every
        step (progress, history, checkpoints), all of them; where one returns
        a true value, training ends after that step.
    scale_gradients : bool
        Scale the loss before the backward pass (``torch.amp.GradScaler``), as
        float16 forward passes need: their small gradients underflow to zero
        otherwise. A step whose scaled gradients overflow is skipped and the
        scale lowered, as torch's automatic mixed precision does.

    Raises
    ------
    FloatingPointError
        When the loss becomes NaN or infinite; training cannot recover from that.
    """
    if n_steps == 0:
        return
    optimizer = torch.optim.SGD(
        parameters, lr=learning_rate, momentum=momentum, weight_decay=weight_decay
    )
    scaler = torch.amp.GradScaler(parameters[0].device.type, enabled=scale_gradients)
    for step in range(n_steps):
        loss, details = step_loss(step)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise FloatingPointError(
                f"The training loss became {loss_value} at step {step}; lower the "
                f"learning rate (now {learning_rate}) or check the input for extreme values."
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if clip_norm is not None:
            scaler.unscale_(optimizer)  # clipped at the gradients' own scale
            torch.nn.utils.clip_grad_norm_(parameters, clip_norm)
        scaler.step(optimizer)
        scaler.update()
        stops = [callback(step, loss_value, details) for callback in callbacks]
        if any(stops):
            return
