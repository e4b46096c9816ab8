"""Keras models of MSG-GAN: the generators and the shared multi-scale discriminator."""

from networks.layers import channels_at
from networks.msg_discriminator import COMBINE_NAMES, MsgDiscriminator, check_combine_name
from networks.msg_progan import MsgProGanGenerator, scales_for
from networks.msg_stylegan import MsgStyleGanGenerator, mix_styles

ARCH_NAMES = ("progan", "stylegan")

__all__ = ["ARCH_NAMES", "COMBINE_NAMES", "MsgDiscriminator", "MsgProGanGenerator",
           "MsgStyleGanGenerator", "channels_at", "check_combine_name", "mix_styles",
           "scales_for"]
