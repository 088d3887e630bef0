"""Contrastive losses for multi-modal pre-training, one registry and one signature.

``get_loss(name, **settings)(emb, present, logit_scale) -> LossOutput(total, parts)``; see
:mod:`medtriad.losses.base` for the contract and the treatment of missing modalities and
:mod:`medtriad.losses.distributed` for data parallelism.

Registered names: ``clip``, ``more``, ``symile``, ``gram``, ``siglip``, ``dhn_nce``,
``mv_infonce``, ``mv_dhel``.
"""

from medtriad.losses.base import (
    ContrastiveLoss,
    LossOutput,
    available_losses,
    get_loss,
    register_loss,
)
from medtriad.losses.dhn_nce import DhnNceLoss
from medtriad.losses.distributed import GlobalBatch, gather_batch, gather_with_grad
from medtriad.losses.gram import GramLoss, gram_determinant, gram_volume
from medtriad.losses.infonce import ClipLoss, MoreLoss, clamp_logit_scale_
from medtriad.losses.multiview import MultiViewDhelLoss, MultiViewInfoNceLoss
from medtriad.losses.regularizers import REGULARIZERS, RegularizedLoss
from medtriad.losses.siglip import SigLipLoss
from medtriad.losses.symile import SymileLoss

__all__ = [
    "REGULARIZERS",
    "ClipLoss",
    "ContrastiveLoss",
    "DhnNceLoss",
    "GlobalBatch",
    "GramLoss",
    "LossOutput",
    "MoreLoss",
    "MultiViewDhelLoss",
    "MultiViewInfoNceLoss",
    "RegularizedLoss",
    "SigLipLoss",
    "SymileLoss",
    "available_losses",
    "clamp_logit_scale_",
    "gather_batch",
    "gather_with_grad",
    "get_loss",
    "gram_determinant",
    "gram_volume",
    "register_loss",
]
