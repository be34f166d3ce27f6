"""proxopt: torch.optim-compatible optimizers with fused proximal regularization.

Swap ``torch.optim.AdamW(params, ...)`` for ``proxopt.AdamW(params, ..., l1=1e-5)``:
the update, the penalty and the proximal shrinkage run in one pass over memory
in a C++ kernel, and L1 gives exact zeros.
"""

from ._native import backend_info, has_cpu_kernels, set_simd_level, simd_level, simd_levels
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .channels import channel_groups
from .groups import param_groups
from .optimizer import ProxOptimizer
from .penalties import elastic_net_penalty, gaussian_kl_penalty, l1_penalty, l2_penalty
from .pruning import prune_zero_channels
from .rmsprop import RMSprop
from .schedules import RegularizerScheduler
from .sgd import SGD
from .sparsity import SparsityReport, sparsity
from .sparsity_target import SparsityTarget
from . import coupled  # noqa: E402  (proxopt.coupled: the channel groups' classes)
from . import callbacks  # noqa: E402  (proxopt.callbacks: it imports no framework until a class is used)

__version__ = "0.1.0"

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "Adagrad",
    "RMSprop",
    "ProxOptimizer",
    "param_groups",
    "sparsity",
    "SparsityReport",
    "RegularizerScheduler",
    "SparsityTarget",
    "prune_zero_channels",
    "channel_groups",
    "backend_info",
    "has_cpu_kernels",
    "simd_level",
    "simd_levels",
    "set_simd_level",
    "l1_penalty",
    "l2_penalty",
    "elastic_net_penalty",
    "gaussian_kl_penalty",
]
