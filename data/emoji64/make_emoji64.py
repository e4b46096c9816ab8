"""Regenerate the bundled 64x64 emoji images from Noto Color Emoji.

Usage: python data/emoji64/make_emoji64.py [--font PATH] [--count N] [--out DIR]

Reads the font's cmap, keeps single-codepoint emoji that render a non-empty
glyph, picks `count` of them evenly spread over the sorted codepoints, and
writes each as an RGB PNG named by codepoint (`u1f600.png`). The glyph is
composited onto white, cropped to its bounding box, padded to a square with
white and resized to 64x64 with LANCZOS. The output depends only on the font
file and Pillow's LANCZOS filter (checked with Pillow 13.0.0).
"""

from __future__ import annotations

import argparse
import os
import struct
import sys

from PIL import Image, ImageDraw, ImageFont

DEFAULT_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
# CBDT fonts are bitmap-only: FreeType renders them only at a strike size, and
# Noto Color Emoji has a single 109 px strike.
STRIKE_SIZE = 109
OUTPUT_SIZE = 64

# Codepoints in the font that are not stand-alone emoji pictures. These are
# sequence components (regional indicators, skin tone modifiers, hair
# components, tags, variation selectors, ZWJ, keycap combining mark) and the
# ASCII/Latin-1 characters that only become emoji inside a sequence. The
# private-use codepoints map the font's own non-standard glyphs.
EXCLUDED_RANGES = (
    (0x0000, 0x00FF),
    (0x200D, 0x200D),
    (0x20E3, 0x20E3),
    (0xFE0E, 0xFE0F),
    (0x1F1E6, 0x1F1FF),
    (0x1F3FB, 0x1F3FF),
    (0x1F9B0, 0x1F9B3),
    (0xE000, 0xF8FF),
    (0xE0000, 0xE007F),
    (0xF0000, 0x10FFFF),
)


def read_cmap_codepoints(font_path: str) -> list[int]:
    """Return the sorted codepoints mapped by the font's Unicode cmap subtables.

    Parses cmap formats 4 and 12 directly because fontTools is not a project
    dependency and Pillow does not expose the cmap.
    """
    with open(font_path, "rb") as f:
        data = f.read()

    num_tables = struct.unpack_from(">H", data, 4)[0]
    cmap_offset = None
    for i in range(num_tables):
        tag, _, offset, _ = struct.unpack_from(">4sIII", data, 12 + 16 * i)
        if tag == b"cmap":
            cmap_offset = offset
    if cmap_offset is None:
        raise ValueError(f"{font_path} has no cmap table")

    codepoints: set[int] = set()
    num_subtables = struct.unpack_from(">H", data, cmap_offset + 2)[0]
    for i in range(num_subtables):
        platform_id, _, sub_offset = struct.unpack_from(">HHI", data, cmap_offset + 4 + 8 * i)
        if platform_id not in (0, 3):
            continue
        start = cmap_offset + sub_offset
        fmt = struct.unpack_from(">H", data, start)[0]
        if fmt == 12:
            num_groups = struct.unpack_from(">I", data, start + 12)[0]
            for g in range(num_groups):
                first, last, _ = struct.unpack_from(">III", data, start + 16 + 12 * g)
                codepoints.update(range(first, last + 1))
        elif fmt == 4:
            seg_count = struct.unpack_from(">H", data, start + 6)[0] // 2
            ends = struct.unpack_from(f">{seg_count}H", data, start + 14)
            starts = struct.unpack_from(f">{seg_count}H", data, start + 16 + 2 * seg_count)
            for first, last in zip(starts, ends):
                if first != 0xFFFF:
                    codepoints.update(range(first, last + 1))
    return sorted(codepoints)


def is_excluded(codepoint: int) -> bool:
    return any(low <= codepoint <= high for low, high in EXCLUDED_RANGES)


def render_emoji(font: ImageFont.FreeTypeFont, codepoint: int) -> Image.Image | None:
    """Render one codepoint as a 64x64 RGB image, or return None if the glyph is empty."""
    canvas_size = STRIKE_SIZE * 2
    rgba = Image.new("RGBA", (canvas_size, canvas_size), (255, 255, 255, 0))
    draw = ImageDraw.Draw(rgba)
    draw.text((STRIKE_SIZE // 4, STRIKE_SIZE // 4), chr(codepoint), font=font, embedded_color=True)

    bbox = rgba.getchannel("A").getbbox()
    if bbox is None:
        return None

    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgba).convert("RGB").crop(bbox)

    width, height = rgb.size
    side = max(width, height)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(rgb, ((side - width) // 2, (side - height) // 2))
    return square.resize((OUTPUT_SIZE, OUTPUT_SIZE), Image.Resampling.LANCZOS)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--font", default=DEFAULT_FONT, help="path of NotoColorEmoji.ttf")
    parser.add_argument("--count", type=int, default=1000, help="number of images to write")
    parser.add_argument(
        "--out", default=os.path.dirname(os.path.abspath(__file__)), help="output directory"
    )
    args = parser.parse_args(argv)

    font = ImageFont.truetype(args.font, STRIKE_SIZE)
    candidates = [cp for cp in read_cmap_codepoints(args.font) if not is_excluded(cp)]

    rendered: dict[int, Image.Image] = {}
    for codepoint in candidates:
        image = render_emoji(font, codepoint)
        if image is not None:
            rendered[codepoint] = image
    usable = sorted(rendered)
    if len(usable) < args.count:
        print(f"error: only {len(usable)} emoji render, fewer than --count={args.count}",
              file=sys.stderr)
        return 1

    # Evenly spaced indices spread the selection over all Unicode emoji blocks
    # instead of taking only the first blocks.
    chosen = [usable[i * len(usable) // args.count] for i in range(args.count)]

    os.makedirs(args.out, exist_ok=True)
    for name in os.listdir(args.out):
        if name.startswith("u") and name.endswith(".png"):
            os.remove(os.path.join(args.out, name))
    for codepoint in chosen:
        rendered[codepoint].save(os.path.join(args.out, f"u{codepoint:04x}.png"), optimize=True)

    print(f"wrote {len(chosen)} of {len(usable)} renderable emoji "
          f"({len(candidates)} candidates in the cmap) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
