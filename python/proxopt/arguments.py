"""What each of torch.optim's arguments means in proxopt's optimizers, written
once; every optimizer's docstring lists its own arguments from its signature
(with their defaults) and these lines (see ``regularizers.with_regularizers``)."""

from __future__ import annotations

ARGUMENT_DOCS: dict[str, tuple[str, str]] = {
    # name: (type, meaning)
    "params": ("iterable", "parameters, or dicts defining param groups (as for ``torch.optim``)."),
    "lr": ("float | Tensor", "learning rate γ (a 1-element tensor is read each step, no recompile)."),
    "momentum": ("float", "momentum factor μ."),
    "dampening": ("float", "dampening of the momentum buffer (SGD)."),
    "nesterov": ("bool", "Nesterov momentum (needs momentum > 0 and dampening 0)."),
    "betas": ("tuple[float, float]", "(β₁, β₂): decay rates of the first and second moment averages."),
    "eps": ("float", "ε added to the denominator for numerical stability."),
    "weight_decay": ("float", "λ_wd: L2 penalty added to the gradient (AdamW and decoupled_weight_decay: "
                     "decoupled, w ← w(1 − γλ_wd) before the step)."),
    "decoupled_weight_decay": ("bool", "Adam with AdamW's decoupled weight decay."),
    "amsgrad": ("bool", "keep the running maximum of the second moment (AMSGrad)."),
    "lr_decay": ("float", "Adagrad's learning-rate decay: γ_t = γ / (1 + (t − 1)·lr_decay)."),
    "initial_accumulator_value": ("float", "the starting value of Adagrad's sum of squares."),
    "alpha": ("float", "RMSprop's smoothing constant of the squared-gradient average."),
    "centered": ("bool", "RMSprop: normalize by the variance estimate (subtract the squared mean gradient)."),
    "maximize": ("bool", "maximize the objective (the gradient's sign flipped)."),
    "foreach": ("bool | None", "accepted for compatibility; the fused kernel already steps many tensors per call."),
    "capturable": ("bool", "step counters and lr stay on the device, so a step can be captured in a CUDA "
                   "graph; needs CUDA parameters."),
    "differentiable": ("bool", "not supported: True is an error, not silently ignored."),
    "fused": ("bool | None", "None/True: the compiled kernel (CPU, and CUDA where built); False: the "
              "pure-torch reference (``proxopt.reference``), the same math."),
}
