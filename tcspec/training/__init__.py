"""The trainer: hand-written gradients, one loop for per-layer dictionaries and CLTs.

schedules   learning-rate and L1 warm-up/decay factors
loss        the loss, its hand-written gradients, the autograd reference (each activation's
            forward and backward: `tcspec.dictionaries.families`)
dead        ghost grads, aux-k and resampling for dead features
firing      firing statistics (steps since fired, density window)
adam        Adam's moments and step
member      Member (options) and MemberRun (a per-layer dictionary in training)
clt         CLTRun (a cross-layer transcoder in training; its step in clt_step)
checkpoint  checksummed, atomic, resumable checkpoints (one format for both)
loop        the one loop (`train`) over trainables, `train_group`, the data-source protocol
"""

from tcspec.compute.workspace import Workspace
from tcspec.training.adam import ADAM_EPS, AdamState
from tcspec.training.checkpoint import CHECKPOINT, CHECKPOINT_MAGIC, read_checkpoint
from tcspec.training.dead import aux_k_term, ghost_term
from tcspec.training.loop import BatchSource, Trainable, train, train_group
from tcspec.training.loss import loss_and_grads, reference_loss, remove_parallel_grad
from tcspec.training.member import Member, MemberRun
from tcspec.training.schedules import l1_factor, lr_factor

__all__ = [
    "ADAM_EPS",
    "CHECKPOINT",
    "CHECKPOINT_MAGIC",
    "AdamState",
    "BatchSource",
    "Member",
    "MemberRun",
    "Trainable",
    "Workspace",
    "aux_k_term",
    "ghost_term",
    "l1_factor",
    "loss_and_grads",
    "lr_factor",
    "read_checkpoint",
    "reference_loss",
    "remove_parallel_grad",
    "train",
    "train_group",
]
