"""Keras models of MSG-GAN: the generators and the shared multi-scale discriminator."""

from networks.layers import channels_at
from networks.msg_discriminator import COMBINE_NAMES, MsgDiscriminator, check_combine_name
from networks.msg_progan import MsgProGanGenerator, scales_for

ARCH_NAMES = ("progan",)

__all__ = ["ARCH_NAMES", "COMBINE_NAMES", "MsgDiscriminator", "MsgProGanGenerator",
           "channels_at", "check_combine_name", "scales_for"]
