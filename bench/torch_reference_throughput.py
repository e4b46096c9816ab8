"""Measure the training throughput of a PyTorch MSG-ProGAN iteration built like BMSG-GAN.

This is a re-implementation written for a same-machine speed comparison, not the
official code. It repeats the per-iteration work of akanimax/BMSG-GAN, whose
sourcecode/train.py and sourcecode/MSG_GAN/ GAN.py, CustomLayers.py and Losses.py were
read for it. Each iteration is one discriminator step and one generator step with the
relativistic average hinge loss, Adam on both networks and an EMA update of a
generator copy. The networks have equalized learning rate, BMSG-GAN's layer widths and
its multi-scale connections. Inputs are random images, so no data loading is timed.
The average pooling that builds the real image pyramid is timed because BMSG-GAN does
it in its training loop.

torch is not a dependency of msg-tf. Run this with a separate virtual environment that
has torch installed (here /tmp/torchvenv, with torch 2.13.0+cpu):

    /tmp/torchvenv/bin/python bench/torch_reference_throughput.py
    /tmp/torchvenv/bin/python bench/torch_reference_throughput.py --threads=1

After `--warmup_steps` untimed iterations, `--repeats` timed runs of `--steps`
iterations each are made and the median seconds per iteration is reported. The same
process also times a 2048x2048 float32 torch.matmul (best of 5) before and after the
timed runs, so results from machines of different speed can be set side by side. A
drop between the two matmul figures means other jobs took the cores meanwhile. Prints
one JSON line.
"""

import argparse
import copy
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

LEAKY_SLOPE = 0.2
EPSILON = 1e-8
MATMUL_SIZE = 2048
MATMUL_TRIES = 5


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=16, help="Images per step.")
    parser.add_argument("--latent_size", type=int, default=128,
                        help="Length of the latent vector.")
    parser.add_argument("--channels", type=int, default=128,
                        help="Feature maps per conv up to 32x32 (power of two). BMSG-GAN "
                             "halves it at each scale above 32x32, and so does this script.")
    parser.add_argument("--resolution", type=int, default=32,
                        help="Output size in pixels (power of two, at least 32).")
    parser.add_argument("--warmup_steps", type=int, default=3,
                        help="Untimed iterations before measuring.")
    parser.add_argument("--steps", type=int, default=5, help="Iterations per timed repeat.")
    parser.add_argument("--repeats", type=int, default=3,
                        help="Timed repeats; the median is reported.")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice, usually "
                             "the core count).")
    parser.add_argument("--seed", type=int, default=3, help="torch random seed.")
    args = parser.parse_args()

    depth = int(math.log2(args.resolution)) - 1 if args.resolution > 0 else 0
    if args.resolution < 32 or 2 ** (depth + 1) != args.resolution:
        # BMSG-GAN's width formulas raise for fewer than four scales (below 32x32).
        parser.error(f"invalid --resolution {args.resolution}: expected a power of two "
                     "of at least 32")
    min_channels = max(2, 2 ** (depth - 4))
    if args.channels & (args.channels - 1) or args.channels < min_channels:
        parser.error(f"invalid --channels {args.channels}: expected a power of two of at "
                     f"least {min_channels} at --resolution {args.resolution}")
    for name in ("batch_size", "latent_size", "steps", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"invalid --{name} {getattr(args, name)}: expected at least 1")
    if args.batch_size < 2:
        parser.error(f"invalid --batch_size {args.batch_size}: expected at least 2 because "
                     "minibatch stddev needs two images")
    if args.warmup_steps < 0:
        parser.error(f"invalid --warmup_steps {args.warmup_steps}: expected 0 or more")
    if args.threads is not None and args.threads < 1:
        parser.error(f"invalid --threads {args.threads}: expected at least 1")
    args.depth = depth
    return args


class EqualizedConv2d(nn.Module):
    """Conv2d with N(0, 1) weights that are multiplied by the He constant at every call."""

    def __init__(self, in_channels, out_channels, kernel_size, padding=0):
        super().__init__()
        self.weight = nn.Parameter(
            torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.scale = math.sqrt(2.0 / (in_channels * kernel_size * kernel_size))
        self.padding = padding

    def forward(self, x):
        # BMSG-GAN scales the weight tensor, not the output, so the extra multiply
        # and its gradient scale with the weight count.
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


class EqualizedConvTranspose2d(nn.Module):
    """Transposed conv with the He constant taken from the input channels only.

    That fan-in is exact for a 1x1 input, which is the only way this layer is used.
    """

    def __init__(self, in_channels, out_channels, kernel_size):
        super().__init__()
        self.weight = nn.Parameter(
            torch.randn(in_channels, out_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.scale = math.sqrt(2.0 / in_channels)

    def forward(self, x):
        return F.conv_transpose2d(x, self.weight * self.scale, self.bias)


def pixel_norm(x):
    return x / x.pow(2).mean(dim=1, keepdim=True).add(EPSILON).sqrt()


def minibatch_stddev(x):
    """Append one channel: the per-feature stddev over the whole batch, averaged to a scalar."""
    spread = (x - x.mean(dim=0, keepdim=True)).pow(2).mean(dim=0).add(EPSILON).sqrt()
    batch, _, height, width = x.shape
    return torch.cat([x, spread.mean().view(1, 1, 1, 1).expand(batch, 1, height, width)],
                     dim=1)


def leaky_relu(x):
    return F.leaky_relu(x, LEAKY_SLOPE)


def generator_widths(channels, depth):
    """Return (in, out) channels of the 8x8 and finer blocks, as BMSG-GAN sizes them."""
    widths = []
    for index in range(depth - 1):
        if index <= 2:
            widths.append((channels, channels))
        else:
            widths.append((channels >> (index - 3), channels >> (index - 2)))
    return widths


def discriminator_widths(channels, depth):
    """Return (in, out, fromRGB out) channels of the blocks, coarsest (8x8 input) first.

    Each block's second conv halves the width and the next coarser image adds the
    other half through its fromRGB conv, as in BMSG-GAN.
    """
    widths = []
    for index in range(depth - 1):
        if index <= 2:
            widths.append((channels, channels // 2, channels // 2))
        else:
            width = channels >> (index - 2)
            widths.append((width, width, channels >> (index - 1)))
    # The finest image is the only input of its block, so its fromRGB fills every channel.
    finest_in, finest_out, _ = widths[-1]
    widths[-1] = (finest_in, finest_out, finest_in)
    return widths


class GeneratorBlock(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv_1 = EqualizedConv2d(in_channels, out_channels, 3, padding=1)
        self.conv_2 = EqualizedConv2d(out_channels, out_channels, 3, padding=1)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = pixel_norm(leaky_relu(self.conv_1(x)))
        return pixel_norm(leaky_relu(self.conv_2(x)))


class Generator(nn.Module):
    """MSG-ProGAN generator returning one RGB image per scale, 4x4 first."""

    def __init__(self, latent_size, channels, depth):
        super().__init__()
        self.initial_deconv = EqualizedConvTranspose2d(latent_size, channels, 4)
        self.initial_conv = EqualizedConv2d(channels, channels, 3, padding=1)
        self.blocks = nn.ModuleList(
            GeneratorBlock(c_in, c_out) for c_in, c_out in generator_widths(channels, depth))
        rgb_inputs = [channels] + [c_out for _, c_out in generator_widths(channels, depth)]
        # BMSG-GAN's toRGB outputs are linear because no tanh or clamp follows them.
        self.to_rgb = nn.ModuleList(EqualizedConv2d(c, 3, 1) for c in rgb_inputs)

    def forward(self, z):
        # NOTE: the BMSG-GAN version read feeds N(0, I) latents unnormalized and
        # pixel-normalizes the 4x4 block only after its second conv. Some copies of its
        # GAN.py rescale latents to norm sqrt(latent_size), a negligible cost here.
        x = leaky_relu(self.initial_deconv(z.view(*z.shape, 1, 1)))
        x = pixel_norm(leaky_relu(self.initial_conv(x)))
        images = [self.to_rgb[0](x)]
        for block, to_rgb in zip(self.blocks, self.to_rgb[1:]):
            x = block(x)
            images.append(to_rgb(x))
        return images


class DiscriminatorBlock(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv_1 = EqualizedConv2d(in_channels, in_channels, 3, padding=1)
        self.conv_2 = EqualizedConv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x):
        x = leaky_relu(self.conv_1(x))
        x = leaky_relu(self.conv_2(x))
        return F.avg_pool2d(x, 2)


class DiscriminatorFinalBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv_1 = EqualizedConv2d(channels + 1, channels, 3, padding=1)
        self.conv_2 = EqualizedConv2d(channels, channels, 4)
        self.conv_out = EqualizedConv2d(channels, 1, 1)

    def forward(self, x):
        x = leaky_relu(self.conv_1(minibatch_stddev(x)))
        x = leaky_relu(self.conv_2(x))
        return self.conv_out(x).view(-1)


class Discriminator(nn.Module):
    """MSG-ProGAN discriminator taking the image list that Generator returns.

    Each coarser image passes through a linear 1x1 fromRGB conv and is concatenated in
    front of the features, which the MSG-GAN paper (Karnewar and Wang) calls the lin_cat
    combine. Only the 4x4 block has minibatch stddev.
    """

    def __init__(self, channels, depth):
        super().__init__()
        widths = discriminator_widths(channels, depth)
        self.blocks = nn.ModuleList(DiscriminatorBlock(c_in, c_out) for c_in, c_out, _ in widths)
        self.from_rgb = nn.ModuleList(EqualizedConv2d(3, c_rgb, 1) for _, _, c_rgb in widths)
        self.final_from_rgb = EqualizedConv2d(3, channels // 2, 1)
        self.final_block = DiscriminatorFinalBlock(channels)

    def forward(self, images):
        x = self.blocks[-1](self.from_rgb[-1](images[-1]))
        for index in range(len(self.blocks) - 2, -1, -1):
            x = torch.cat([self.from_rgb[index](images[index + 1]), x], dim=1)
            x = self.blocks[index](x)
        x = torch.cat([self.final_from_rgb(images[0]), x], dim=1)
        return self.final_block(x)


def discriminator_loss(real_scores, fake_scores):
    """Relativistic average hinge loss for D."""
    real_vs_fake = real_scores - fake_scores.mean()
    fake_vs_real = fake_scores - real_scores.mean()
    return F.relu(1 - real_vs_fake).mean() + F.relu(1 + fake_vs_real).mean()


def generator_loss(real_scores, fake_scores):
    """Relativistic average hinge loss for G: the D loss with the targets swapped."""
    real_vs_fake = real_scores - fake_scores.mean()
    fake_vs_real = fake_scores - real_scores.mean()
    return F.relu(1 + real_vs_fake).mean() + F.relu(1 - fake_vs_real).mean()


class ReferenceTraining:
    """Networks, optimizers and the EMA generator of one BMSG-GAN training run."""

    ADAM_LR = 0.003
    ADAM_BETAS = (0.0, 0.99)
    ADAM_EPS = 1e-8
    EMA_BETA = 0.999

    def __init__(self, args):
        self.batch_size = args.batch_size
        self.latent_size = args.latent_size
        self.depth = args.depth
        self.G = Generator(args.latent_size, args.channels, args.depth)
        self.D = Discriminator(args.channels, args.depth)
        self.G_ema = copy.deepcopy(self.G)
        self.G_ema.requires_grad_(False)
        self.G_optimizer = torch.optim.Adam(self.G.parameters(), lr=self.ADAM_LR,
                                            betas=self.ADAM_BETAS, eps=self.ADAM_EPS)
        self.D_optimizer = torch.optim.Adam(self.D.parameters(), lr=self.ADAM_LR,
                                            betas=self.ADAM_BETAS, eps=self.ADAM_EPS)

    def real_pyramid(self, images):
        """Return the real images at every scale, 4x4 first, each pooled from the full image."""
        pyramid = [images] + [F.avg_pool2d(images, 2 ** level) for level in range(1, self.depth)]
        return pyramid[::-1]

    def iteration(self, images):
        """Run one D step then one G step with the EMA update; return both losses."""
        reals = self.real_pyramid(images)

        # BMSG-GAN generates the D step's fakes with autograd on and then detaches them,
        # so no_grad would undercount its work.
        z = torch.randn(self.batch_size, self.latent_size)
        fakes = [image.detach() for image in self.G(z)]
        d_loss = discriminator_loss(self.D(reals), self.D(fakes))
        self.D_optimizer.zero_grad()
        d_loss.backward()
        self.D_optimizer.step()

        # BMSG-GAN draws new latents for the G step and leaves D trainable, so this
        # backward pass also fills D's weight gradients through both the real and the
        # fake scores. D_optimizer.zero_grad() discards them before the next D step.
        z = torch.randn(self.batch_size, self.latent_size)
        g_loss = generator_loss(self.D(reals), self.D(self.G(z)))
        self.G_optimizer.zero_grad()
        g_loss.backward()
        self.G_optimizer.step()

        self.update_ema()
        return d_loss.item(), g_loss.item()

    @torch.no_grad()
    def update_ema(self):
        # Parameters only: these networks have no buffers.
        for ema_param, param in zip(self.G_ema.parameters(), self.G.parameters()):
            ema_param.copy_(self.EMA_BETA * ema_param + (1.0 - self.EMA_BETA) * param)


def count_parameters(module):
    return sum(param.numel() for param in module.parameters())


@torch.no_grad()
def forward_macs_per_image(module, inputs, batch_size):
    """Count the multiply-accumulates of the convs in one forward pass, per image."""
    total = 0

    def count_conv(layer, layer_inputs, output):
        nonlocal total
        kernel = layer.weight.shape[2] * layer.weight.shape[3]
        if isinstance(layer, EqualizedConvTranspose2d):
            total += layer_inputs[0].numel() * layer.weight.shape[1] * kernel
        else:
            total += output.numel() * layer.weight.shape[1] * kernel

    handles = [layer.register_forward_hook(count_conv) for layer in module.modules()
               if isinstance(layer, (EqualizedConv2d, EqualizedConvTranspose2d))]
    try:
        module(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return total / batch_size


def matmul_gflops():
    """Time a float32 square matmul MATMUL_TRIES times; return the best rate in GFLOP/s."""
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE)
    torch.matmul(a, b)
    best = math.inf
    for _ in range(MATMUL_TRIES):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * MATMUL_SIZE ** 3 / best / 1e9


def main():
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    training = ReferenceTraining(args)
    images = torch.rand(args.batch_size, 3, args.resolution, args.resolution) * 2 - 1
    z = torch.randn(args.batch_size, args.latent_size)
    g_macs = forward_macs_per_image(training.G, z, args.batch_size)
    d_macs = forward_macs_per_image(training.D, training.real_pyramid(images), args.batch_size)

    for _ in range(args.warmup_steps):
        training.iteration(images)
    gflops_before = matmul_gflops()

    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            d_loss, g_loss = training.iteration(images)
        seconds.append((time.perf_counter() - start) / args.steps)
    sec_per_iteration = statistics.median(seconds)
    gflops_after = matmul_gflops()

    print(json.dumps({
        "benchmark": "torch_reference_throughput",
        "images_per_sec": round(args.batch_size / sec_per_iteration, 3),
        "sec_per_iteration": round(sec_per_iteration, 4),
        "sec_per_iteration_repeats": [round(value, 4) for value in seconds],
        "batch_size": args.batch_size,
        "latent_size": args.latent_size,
        "channels": args.channels,
        "resolution": args.resolution,
        "warmup_steps": args.warmup_steps,
        "steps": args.steps,
        "repeats": args.repeats,
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "matmul_2048_gflops": round(gflops_before, 1),
        "matmul_2048_gflops_after": round(gflops_after, 1),
        "generator_params": count_parameters(training.G),
        "discriminator_params": count_parameters(training.D),
        "generator_forward_mmacs_per_image": round(g_macs / 1e6, 2),
        "discriminator_forward_mmacs_per_image": round(d_macs / 1e6, 2),
        "last_d_loss": round(d_loss, 4),
        "last_g_loss": round(g_loss, 4),
    }))


if __name__ == "__main__":
    main()
