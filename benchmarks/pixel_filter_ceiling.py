"""How well can a renderer that traces one ray per pixel score on a downsampled Blender scene, at best?

    python benchmarks/pixel_filter_ceiling.py --low ../shared/data/lego_200 --high ../shared/data/lego_800

The low-resolution copies of the NeRF-synthetic scenes are filtered downsamples of the full-resolution images
(lego_200 is Pillow's Lanczos resize of lego_800, exactly). A pixel of them is a weighted average over its footprint,
while a NeRF renderer traces one ray through the pixel's centre. This script takes the full-resolution image as the
scene and scores, against each low-resolution test image (both composited on white, as the methods are scored):

- one sample per pixel, at a sub-pixel of the full-resolution image next to the pixel's centre: the score of a
  perfect model rendered with one ray per pixel;
- one sample at the pixel's centre of the scene blurred by a Gaussian: a model that is that much blurrier than the
  scene;
- the mean of 2 or 4 samples per pixel (a diagonal pair, a 2x2 grid, a rotated grid): a perfect model rendered with
  that many rays per pixel;
- the mean of all its sub-pixels: a box filter.

Sub-pixel positions are those of a factor of 4 (200 from 800 px), rounded to the nearest sub-pixel for other factors.

It first checks that the low-resolution image is the Lanczos resize of the full one, and says so when it is not.

With ``--sub-pixel N`` it also asks what a training ray cast through a random point of its pixel could be fitted to.
For N random offsets per view, uniform within a pixel, it resizes the full-resolution image with its sampling grid
shifted by that offset (the low-resolution image as it would be there, exactly) and scores the low-resolution
pixels interpolated to the offset against it: nearest (the pixel's own value), bilinear, Keys' cubic and Lanczos-3.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

sys.path.insert(0, str(Path(__file__).parent))
from compare_methods import psnr_from_mse  # noqa: E402


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    """PSNR of ``image`` against ``reference``, both in [0, 1], scored as the harness scores."""
    return psnr_from_mse(float(np.mean((image - reference) ** 2)))


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """RGBA in [0, 1] over a white background."""
    return rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])


def samplings(high: np.ndarray, factor: int) -> dict:
    """Low-resolution images made from ``high`` by sampling each low pixel's footprint of factor x factor pixels."""
    height, width = high.shape[0] // factor, high.shape[1] // factor

    def footprints(image: np.ndarray) -> np.ndarray:  # [low row, sub-row, low column, sub-column, RGB]
        return image[: height * factor, : width * factor].reshape(height, factor, width, factor, 3)

    blocks = footprints(high)

    def at(*points):  # mean of the sub-pixels (row, column) of every footprint, in units of its factor
        return np.mean([blocks[:, round(r * (factor - 1)), :, round(c * (factor - 1))] for r, c in points], axis=0)

    def blurred(sigma: float):  # one ray at the pixel's centre through the scene blurred by sigma low pixels
        smooth = np.stack([gaussian_filter(high[..., c], sigma * factor) for c in range(3)], axis=-1)
        corners = footprints(smooth)
        middle = (factor // 2 - 1, factor // 2)  # the sub-pixels around the centre: bilinear at the centre itself
        return corners[:, middle, :, :][:, :, :, middle].mean(axis=(1, 3))

    return {
        "1 ray (sub-pixel next to the centre)": at((1 / 3, 1 / 3)),
        **{f"1 ray, the scene blurred by a Gaussian of {sigma} pixel": blurred(sigma) for sigma in (0.25, 0.5, 0.75)},
        "2 rays (diagonal)": at((0, 0), (1, 1)),
        "4 rays (2x2 grid)": at((0, 0), (0, 2 / 3), (2 / 3, 0), (2 / 3, 2 / 3)),
        "4 rays (rotated grid)": at((0, 1 / 3), (1 / 3, 1), (1, 2 / 3), (2 / 3, 0)),
        "box filter (all sub-pixels)": blocks.mean(axis=(1, 3)),
    }


def interpolation_kernels() -> dict:
    """Separable interpolation kernels k(t), t in low-resolution pixels from a tap, and each one's support (taps on
    either side of the point)."""

    def keys_cubic(t: np.ndarray) -> np.ndarray:  # a = -0.5, as PyTorch's and OpenCV's bicubic
        t = np.abs(t)
        near = (1.5 * t - 2.5) * t * t + 1
        far = ((-0.5 * t + 2.5) * t - 4) * t + 2
        return np.where(t <= 1, near, np.where(t < 2, far, 0.0))

    return {
        "nearest (the pixel's own value)": (lambda t: ((t > -0.5) & (t <= 0.5)).astype(np.float64), 1),
        "bilinear": (lambda t: np.clip(1 - np.abs(t), 0, None), 1),
        "Keys' cubic": (keys_cubic, 2),
        "Lanczos-3": (lambda t: np.sinc(t) * np.sinc(t / 3) * (np.abs(t) < 3), 3),
    }


def interpolate(image: np.ndarray, dy: float, dx: float, kernel, support: int) -> np.ndarray:
    """``image`` (H, W, 3) read at every pixel's centre moved by (dy, dx) pixels, the border pixels repeated."""
    out = image
    for axis, shift in ((0, dy), (1, dx)):
        taps = np.arange(-support, support + 1)
        weights = kernel(taps - shift)
        weights = weights / weights.sum()
        pad = [(0, 0)] * 3
        pad[axis] = (support, support)
        padded = np.pad(out, pad, mode="edge")
        size = out.shape[axis]
        out = sum(w * np.take(padded, np.arange(size) + support + t, axis=axis) for w, t in zip(weights, taps) if w)
    return out


def sub_pixel_scores(high_image: Image.Image, low: np.ndarray, offsets: np.ndarray) -> dict:
    """PSNR of each interpolation of ``low`` against ``high_image``'s Lanczos resize with the sampling grid moved by
    each (dy, dx) of ``offsets``, in low-resolution pixels."""
    kernels = interpolation_kernels()
    factor = high_image.width / low.shape[1]
    margin = int(np.ceil(factor))  # Pillow refuses a box that starts left of or above the image: pad it
    padded = Image.new("RGBA", (high_image.width + 2 * margin, high_image.height + 2 * margin), (0, 0, 0, 0))
    padded.paste(high_image.convert("RGBA"), (margin, margin))
    scores: dict = {}
    for dy, dx in offsets:
        left, top = margin + dx * factor, margin + dy * factor
        box = (left, top, left + high_image.width, top + high_image.height)
        shifted = padded.resize((low.shape[1], low.shape[0]), Image.LANCZOS, box=box)
        truth = composite_on_white(np.asarray(shifted, dtype=np.float64) / 255.0)
        for label, (kernel, support) in kernels.items():
            guess = np.clip(interpolate(low, dy, dx, kernel, support), 0.0, 1.0)
            scores.setdefault(label, []).append(psnr(guess, truth))
    return scores


def print_table(header: str, scores: dict, over: str = "the views") -> None:
    print(f"| {header} | mean PSNR over {over} (dB) | lowest | highest |")
    print("| --- | ---: | ---: | ---: |")
    for label, values in scores.items():
        print(f"| {label} | {np.mean(values):.2f} | {np.min(values):.2f} | {np.max(values):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--low", type=Path, default=Path("../shared/data/lego_200"))
    parser.add_argument("--high", type=Path, default=Path("../shared/data/lego_800"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--sub-pixel", type=int, default=0, metavar="N",
                        help="also score interpolated pixels at N random sub-pixel offsets per view (see above)")
    parser.add_argument("--seed", type=int, default=0, help="of the sub-pixel offsets")
    args = parser.parse_args()
    if args.sub_pixel < 0:
        sys.exit(f"--sub-pixel: offsets per view must be 0 or more, got {args.sub_pixel}")

    for folder in (args.low, args.high):
        if not (folder / f"transforms_{args.split}.json").is_file():
            sys.exit(f"{folder}: no transforms_{args.split}.json")

    frames = json.loads((args.low / f"transforms_{args.split}.json").read_text())["frames"]
    if not frames:
        sys.exit(f"{args.low / f'transforms_{args.split}.json'}: no frames")
    scores: dict = {}
    sub_pixel: dict = {}
    rng = np.random.default_rng(args.seed)
    not_lanczos = 0
    for frame in frames:
        name = frame["file_path"].removeprefix("./") + ".png"
        low_path, high_path = args.low / name, args.high / name
        if not high_path.is_file():
            sys.exit(f"{high_path}: missing (the low-resolution split names it)")
        high_image = Image.open(high_path)
        low_image = Image.open(low_path)
        factor = high_image.width // low_image.width
        if np.any(np.asarray(high_image.resize(low_image.size, Image.LANCZOS)) != np.asarray(low_image)):
            not_lanczos += 1
        low = composite_on_white(np.asarray(low_image, dtype=np.float64) / 255.0)
        high = composite_on_white(np.asarray(high_image, dtype=np.float64) / 255.0)
        for label, image in samplings(high, factor).items():
            scores.setdefault(label, []).append(psnr(image, low))
        if args.sub_pixel > 0:
            offsets = rng.uniform(-0.5, 0.5, size=(args.sub_pixel, 2))
            for label, values in sub_pixel_scores(high_image, low, offsets).items():
                sub_pixel.setdefault(label, []).extend(values)

    print(f"{len(frames)} {args.split} views of {args.low} against {args.high} (factor {factor}); "
          f"{'all are' if not not_lanczos else f'{len(frames) - not_lanczos} are'} its Lanczos resize")  # fmt: skip
    print_table("a perfect model (the full-resolution image), rendered with", scores)
    if sub_pixel:
        print(f"\nThe low-resolution image at {args.sub_pixel} random sub-pixel offsets per view")
        print_table("its pixels interpolated to the offset by", sub_pixel, over="the views and offsets")


if __name__ == "__main__":
    main()
