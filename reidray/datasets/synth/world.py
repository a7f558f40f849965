"""A procedural world of people and cameras, drawn with vectorised numpy.

Each identity has fixed clothing colours, patterns, body proportions, skin, hair and bag;
each camera has its own illumination, colour cast, blur, resolution, framing, background
and occluders. An image of identity `i` in camera `c` is a pure function of
(seed, i, c, shot key), so every layout the generator writes is reproducible.

What makes it a ReID problem rather than a colour lookup: colours come from a small,
skewed palette (many people wear black, grey or navy), the camera changes the colours,
the view (front/back/side) hides or shows the logo and the backpack, low-resolution
cameras wash out stripes and checks, and backgrounds and occluders belong to the camera,
not to the person.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from reidray.datasets.synth.plan import DISTRACTOR, JUNK, Shot

H, W = 128, 64

# Clothing palette (RGB in [0, 1]) and how often each colour is worn: dark colours dominate,
# so two people often share a colour and the pattern, the second colour or the shape decides.
_PALETTE = np.array(
    [
        (0.08, 0.08, 0.09), (0.25, 0.25, 0.27), (0.50, 0.50, 0.50), (0.88, 0.88, 0.86),
        (0.10, 0.13, 0.35), (0.22, 0.36, 0.72), (0.55, 0.70, 0.90), (0.75, 0.12, 0.12),
        (0.45, 0.10, 0.15), (0.15, 0.52, 0.22), (0.40, 0.42, 0.15), (0.90, 0.80, 0.20),
        (0.90, 0.50, 0.10), (0.92, 0.60, 0.70), (0.45, 0.20, 0.60), (0.45, 0.30, 0.18),
        (0.80, 0.72, 0.55), (0.10, 0.50, 0.50),
    ],
    dtype=np.float32,
)
_UPPER_W = np.array([3, 2, 2, 2.5, 2, 1.5, 1.5, 1.5, 1, 1.5, 1, 1, 1, 1, 1, 1.5, 1.5, 1], dtype=np.float64)
_LOWER_W = np.array([4, 2, 2, 1, 3, 3, 1, 0.5, 0.5, 0.5, 1, 0.3, 0.3, 0.5, 0.3, 2, 2.5, 0.3])
_SKIN = np.array([(0.96, 0.80, 0.69), (0.87, 0.67, 0.52), (0.70, 0.50, 0.36), (0.45, 0.30, 0.20)], np.float32)
_HAIR = np.array([(0.05, 0.04, 0.04), (0.25, 0.16, 0.08), (0.55, 0.40, 0.22), (0.80, 0.70, 0.45), (0.6, 0.6, 0.6)], np.float32)
UPPER_PATTERNS = ("plain", "hstripes", "vstripes", "checks", "twotone", "logo")
LOWER_TYPES = ("trousers", "shorts", "skirt")
BAGS = ("none", "backpack", "shoulder", "handbag")


@dataclass(frozen=True)
class Identity:
    """Everything that stays the same about a person across cameras."""

    upper: np.ndarray
    upper2: np.ndarray
    lower: np.ndarray
    shoes: np.ndarray
    skin: np.ndarray
    hair: np.ndarray
    bag_colour: np.ndarray
    pattern: str
    period: float
    lower_type: str
    short_sleeves: bool
    long_hair: bool
    bag: str
    bag_side: int
    height: float
    shoulder: float
    hip: float
    leg: float


@dataclass(frozen=True)
class Camera:
    """Everything that a camera does to every image it takes."""

    gain: float
    cast: np.ndarray
    contrast: float
    light_dir: float
    blur: float
    lowres: float
    jpeg_quality: int
    scale: float
    yshift: float
    wall: np.ndarray
    floor: np.ndarray
    horizon: float
    texture_period: float
    texture_amp: float
    occlusion: float
    occluder: np.ndarray
    back_view: float
    noise: float


def _pick(rng: np.random.Generator, weights: np.ndarray) -> np.ndarray:
    colour = _PALETTE[rng.choice(len(_PALETTE), p=weights / weights.sum())]
    return np.clip(colour + rng.normal(0, 0.035, 3), 0, 1).astype(np.float32)


def make_identity(rng: np.random.Generator) -> Identity:
    """A random person; `rng` alone decides it."""
    upper = _pick(rng, _UPPER_W)
    upper2 = _pick(rng, _UPPER_W)
    while np.abs(upper2 - upper).sum() < 0.4:
        upper2 = _pick(rng, _UPPER_W)
    return Identity(
        upper=upper,
        upper2=upper2,
        lower=_pick(rng, _LOWER_W),
        shoes=_pick(rng, _LOWER_W),
        skin=_SKIN[rng.integers(len(_SKIN))] * np.float32(rng.uniform(0.95, 1.05)),
        hair=_HAIR[rng.choice(len(_HAIR), p=[0.45, 0.25, 0.12, 0.1, 0.08])],
        bag_colour=_pick(rng, _LOWER_W),
        pattern=str(rng.choice(UPPER_PATTERNS, p=[0.34, 0.16, 0.1, 0.12, 0.14, 0.14])),
        period=float(rng.uniform(0.035, 0.07)),
        lower_type=str(rng.choice(LOWER_TYPES, p=[0.7, 0.15, 0.15])),
        short_sleeves=bool(rng.random() < 0.4),
        long_hair=bool(rng.random() < 0.35),
        bag=str(rng.choice(BAGS, p=[0.45, 0.25, 0.18, 0.12])),
        bag_side=int(rng.choice((-1, 1))),
        height=float(rng.uniform(0.86, 0.97)),
        shoulder=float(rng.uniform(0.13, 0.19)),
        hip=float(rng.uniform(0.105, 0.15)),
        leg=float(rng.uniform(0.47, 0.53)),
    )


def make_camera(rng: np.random.Generator) -> Camera:
    """A random camera; `rng` alone decides it."""
    return Camera(
        gain=float(rng.uniform(0.8, 1.15)),
        cast=(1 + rng.normal(0, 0.05, 3)).astype(np.float32),
        contrast=float(rng.uniform(0.7, 1.15)),
        light_dir=float(rng.uniform(-0.35, 0.35)),
        blur=float(rng.uniform(0.3, 1.1)),
        lowres=float(rng.choice((1.0, 1.0, 1.0, 0.6, 0.45))),
        jpeg_quality=int(rng.integers(55, 95)),
        scale=float(rng.uniform(0.86, 0.98)),
        yshift=float(rng.uniform(-0.02, 0.04)),
        wall=(rng.uniform(0.3, 0.8) + rng.normal(0, 0.06, 3)).astype(np.float32),
        floor=(rng.uniform(0.25, 0.65) + rng.normal(0, 0.05, 3)).astype(np.float32),
        horizon=float(rng.uniform(0.45, 0.8)),
        texture_period=float(rng.uniform(6, 30)),
        texture_amp=float(rng.uniform(0.03, 0.2)),
        occlusion=float(rng.uniform(0.0, 0.2)),
        occluder=rng.uniform(0.1, 0.9, 3).astype(np.float32),
        back_view=float(rng.uniform(0.1, 0.6)),
        noise=float(rng.uniform(0.005, 0.03)),
    )


_TAGS = {"id": 1, "cam": 2, "shot": 3, "stranger": 4}  # streams of random numbers, never shared
_YY, _XX = np.mgrid[0:H, 0:W].astype(np.float32)


def _paint(img: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> None:
    """img[mask] = colour (an RGB triple)."""
    img[mask] = colour


def _background(cam: Camera, rng: np.random.Generator) -> np.ndarray:
    """The camera's scene behind the person: a wall with shop-front texture over the floor,
    varying per shot because people cross the view in front of different shops, plus clutter."""
    shift = rng.uniform(0, 200)
    columns = 1 + cam.texture_amp * np.sign(np.sin((_XX[0] + shift) * (2 * np.pi / cam.texture_period)))
    rows = _YY[:, 0] / H
    wall = 0.5 * cam.wall + 0.5 * rng.uniform(0.25, 0.8, 3).astype(np.float32)  # the shop behind
    img = wall * columns[None, :, None] * (1 - 0.25 * rows)[:, None, None]
    floor = rows >= cam.horizon
    img[floor] = cam.floor * (0.8 + 0.4 * rows[floor])[:, None, None]
    for _ in range(rng.integers(0, 3)):
        x0, y0 = rng.uniform(-10, W), rng.uniform(0, H)
        box = (_XX >= x0) & (_XX < x0 + rng.uniform(4, 20)) & (_YY >= y0) & (_YY < y0 + rng.uniform(6, 40))
        _paint(img, box, rng.uniform(0.1, 0.9, 3).astype(np.float32))
    return img.astype(np.float32)


def _person(img: np.ndarray, who: Identity, cam: Camera, rng: np.random.Generator, *, view: str,
            scale: float, cx: float, top: float) -> None:
    """Paint `who` onto `img` in place. Coordinates are in units of the person's height:
    v = 0 at the top of the head, 1 at the soles; u = 0 on the body axis."""
    ph = scale * who.height * H
    v = (_YY - top) / ph
    u = (_XX - cx) / ph
    side = view == "side"
    facing = rng.choice((-1.0, 1.0))
    sh = who.shoulder * (0.6 if side else 1.0)
    hip = who.hip * (0.75 if side else 1.0)
    waist = 1 - who.leg
    stride = rng.uniform(0.0, 0.16)
    swing = rng.uniform(-0.25, 0.25)
    body = np.zeros(img.shape[:2], dtype=bool)

    def paint(mask: np.ndarray, c: np.ndarray, where_second: np.ndarray | None = None) -> None:
        """Paint a body part in a slightly jittered colour (or two colours, split by `where_second`)."""
        nonlocal body
        jitter = np.clip(1 + rng.normal(0, 0.03, 3), 0.9, 1.1).astype(np.float32)
        if where_second is not None:
            _paint(img, mask & ~where_second, c * jitter)
            _paint(img, mask & where_second, who.upper2 * jitter)
        else:
            _paint(img, mask, c * jitter)
        body |= mask

    if who.long_hair and view == "back":
        paint((np.abs(u) < 0.07) & (v > 0.04) & (v < 0.3), who.hair)
    if who.bag == "backpack" and side:
        pack = (facing * u < -sh * 0.6) & (facing * u > -sh - 0.09) & (v > 0.16) & (v < 0.42)
        paint(pack, who.bag_colour)
    # legs: two slanted strips that open with the stride
    leg_mask = np.zeros_like(v, dtype=bool)
    for sgn in (-1.0, 1.0):
        centre = sgn * (0.0 if side else hip * 0.5) + sgn * stride * (v - waist)
        leg_mask |= (np.abs(u - centre) < 0.045) & (v >= waist) & (v < 0.96)
    bare = v > waist + 0.17 if who.lower_type == "shorts" else np.zeros_like(leg_mask)
    paint(leg_mask & ~bare, who.lower)
    paint(leg_mask & bare, who.skin)
    feet = np.zeros_like(leg_mask)
    for sgn in (-1.0, 1.0):
        centre = sgn * (0.0 if side else hip * 0.5) + sgn * stride * (0.98 - waist)
        feet |= (np.abs(u - centre - (facing * 0.02 if side else 0)) < 0.05) & (v >= 0.955) & (v < 1.0)
    paint(feet, who.shoes)
    # torso: trapezoid from shoulders (v=0.14) to hips (waist), patterned
    t = np.clip((v - 0.14) / (waist - 0.14), 0, 1)
    torso = (v >= 0.13) & (v < waist + 0.02) & (np.abs(u) < sh + (hip - sh) * t)
    if who.lower_type == "skirt":
        skirt = (v >= waist) & (v < waist + 0.2) & (np.abs(u) < hip + 0.12 * (v - waist))
        paint(skirt, who.lower)
    paint(torso, who.upper, where_second=_pattern(who, view, u, v, waist))
    if who.bag == "backpack" and view == "back":
        paint((np.abs(u) < sh * 0.6) & (v > 0.17) & (v < 0.4), who.bag_colour)
    if who.bag == "backpack" and view == "front":
        straps = (np.abs(np.abs(u) - sh * 0.55) < 0.015) & (v > 0.13) & (v < 0.32)
        paint(straps, who.bag_colour)
    # arms: strips beside the torso (one arm, swinging forward or back, from the side); short
    # sleeves show skin below the elbow
    for sgn in (-1.0, 1.0) if not side else (0.0,):
        centre = sgn * (sh + 0.025) + (sgn or facing) * swing * (v - 0.15)
        arm = (np.abs(u - centre) < 0.028) & (v >= 0.14) & (v < waist + 0.02)
        sleeve_end = 0.27 if who.short_sleeves else waist - 0.03
        paint(arm & (v < sleeve_end), who.upper)
        paint(arm & (v >= sleeve_end), who.skin)
    if who.bag in ("shoulder", "handbag"):
        s = who.bag_side * (-1 if view == "back" else 1)
        y0 = waist - 0.08 if who.bag == "shoulder" else waist + 0.02
        bag = (s * u > sh - 0.01) & (s * u < sh + 0.08) & (v > y0) & (v < y0 + 0.11)
        paint(bag, who.bag_colour)
        if who.bag == "shoulder" and not side:
            strap = np.abs((s * u) - (-sh * 0.6 + (v - 0.13) * (2 * sh) / max(y0 - 0.13, 0.05))) < 0.012
            paint(strap & (v > 0.13) & (v < y0), who.bag_colour)
    # head and hair
    head = ((u / 0.052) ** 2 + ((v - 0.065) / 0.065) ** 2) < 1
    paint(head, who.skin)
    hair = head & ((v < 0.035) if view != "back" else (v < 0.11))
    if side:
        hair |= head & (facing * u < -0.01) & (v < 0.09)
    paint(hair, who.hair)
    if who.long_hair and view != "back":
        paint((np.abs(np.abs(u) - 0.05) < 0.016) & (v > 0.04) & (v < 0.24), who.hair)
    # round bodies: darker towards the silhouette's sides, lit from the camera's side
    shade = (1 - 1.6 * u**2 - cam.light_dir * u * 3).clip(0.55, 1.2)
    img *= np.where(body, shade, np.float32(1))[..., None]


def _pattern(who: Identity, view: str, u: np.ndarray, v: np.ndarray, waist: float) -> np.ndarray:
    """Where the torso shows the identity's second colour."""
    phase = (v - 0.13) / who.period
    if who.pattern == "hstripes":
        return (phase % 1.0) < 0.5
    if who.pattern == "vstripes":
        return ((u / who.period) % 1.0) < 0.5
    if who.pattern == "checks":
        return ((phase % 1.0) < 0.5) ^ (((u / who.period) % 1.0) < 0.5)
    if who.pattern == "twotone":
        return v > (0.13 + waist) / 2
    if who.pattern == "logo" and view == "front":
        return (np.abs(u) < 0.05) & (np.abs(v - 0.25) < 0.045)
    return np.zeros_like(v, dtype=bool)


def _finish(img: np.ndarray, cam: Camera, rng: np.random.Generator) -> np.ndarray:
    """Apply the camera: illumination, colour cast, contrast, resolution, blur and noise."""
    gain = cam.gain * rng.uniform(0.92, 1.08) * np.clip(1 + rng.normal(0, 0.04, 3), 0.9, 1.1)
    img = ((img - 0.5) * cam.contrast + 0.5) * (gain * cam.cast).astype(np.float32)
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(cam.noise)
    pil = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    if cam.lowres < 1:
        small = (max(8, int(W * cam.lowres)), max(16, int(H * cam.lowres)))
        pil = pil.resize(small, Image.BILINEAR).resize((W, H), Image.BILINEAR)
    pil = pil.filter(ImageFilter.GaussianBlur(cam.blur * rng.uniform(0.7, 1.3)))
    return np.asarray(pil)


class World:
    """`n` identities and `n_cams` cameras drawn from `seed`; renders uint8 [128, 64, 3] crops."""

    def __init__(self, n: int, n_cams: int, seed: int = 0) -> None:
        self.seed = seed
        self.identities = [make_identity(self._rng("id", i)) for i in range(n)]
        self.cameras = [make_camera(self._rng("cam", c)) for c in range(n_cams)]

    def _rng(self, *key: object) -> np.random.Generator:
        return np.random.default_rng([self.seed, *(_TAGS.get(k, k) for k in key)])

    def person(self, ident: int, cam: int, shot: int, *, truncate: bool = False) -> np.ndarray:
        """Identity `ident` seen by camera `cam` (the `shot`-th time). `truncate` gives the
        badly cropped boxes that Market-1501 labels as junk (-1)."""
        return self._draw(self.identities[ident], cam, self._rng("shot", ident, cam, shot), truncate)

    def stranger(self, cam: int, shot: int) -> np.ndarray:
        """A detector false alarm (a distractor, pid 0000): a stranger's fragment or no one at all."""
        rng = self._rng("stranger", cam, shot)
        if rng.random() < 0.4:
            img = _background(self.cameras[cam], rng)
            return _finish(img, self.cameras[cam], rng)
        return self._draw(make_identity(rng), cam, rng, truncate=True)

    def _draw(self, who: Identity, cam_index: int, rng: np.random.Generator, truncate: bool) -> np.ndarray:
        cam = self.cameras[cam_index]
        img = _background(cam, rng)
        r = rng.random()
        view = "back" if r < cam.back_view * 0.8 else ("side" if r > 0.85 else "front")
        scale = cam.scale * rng.uniform(0.92, 1.06)
        top = H * (0.03 + cam.yshift + rng.uniform(-0.03, 0.03))
        cx = W / 2 + rng.uniform(-0.08, 0.08) * W
        if truncate:  # junk boxes and false alarms: much too big, too small or off-centre
            scale *= rng.choice((0.45, 1.9))
            cx += rng.choice((-1, 1)) * rng.uniform(0.2, 0.45) * W
            top += rng.uniform(-0.6, 0.3) * H
        _person(img, who, cam, rng, view=view, scale=scale, cx=cx, top=top)
        if rng.random() < cam.occlusion:  # a pole, a passer-by or a car in front
            if rng.random() < 0.5:
                x0 = rng.uniform(-0.1, 0.8) * W
                box = (_XX >= x0) & (_XX < x0 + rng.uniform(0.15, 0.35) * W)
            else:
                box = _YY >= H * rng.uniform(0.6, 0.85)
            _paint(img, box, cam.occluder * rng.uniform(0.8, 1.2))
        return _finish(img, cam, rng)

    def render(self, shot: Shot) -> np.ndarray:
        """The pixels of a planned shot: a person, a junk box of a person, or a false alarm."""
        if shot.pid == DISTRACTOR:
            return self.stranger(shot.cam, shot.shot)
        return self.person(shot.ident, shot.cam, shot.shot, truncate=shot.pid == JUNK)

    def save(self, shot: Shot, path: Path, size: tuple[int, int] | None = None) -> None:
        """Render `shot` to `path` (JPEG at the camera's quality, or lossless by extension);
        `size` (h, w) resizes, for releases with other crop sizes."""
        pil = Image.fromarray(self.render(shot))
        if size is not None:
            pil = pil.resize((size[1], size[0]), Image.BILINEAR)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() in (".jpg", ".jpeg"):
            pil.save(path, format="JPEG", quality=self.cameras[shot.cam].jpeg_quality)
        else:
            pil.save(path)

    def save_all(
        self, dest: Path, files: list[tuple[Shot, str, dict]], size: tuple[int, int] | None = None
    ) -> list[dict]:
        """Render each (shot, path relative to `dest`, label overrides) and return the truth
        rows the parser must find: image_id, pid, camid, split, is_junk, is_distractor, then
        the overrides. Threads: PIL's blur and encoders release the GIL."""
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            list(pool.map(lambda f: self.save(f[0], dest / f[1], size), files))
        return [
            {"image_id": rel, "pid": shot.pid, "camid": shot.cam, "split": shot.split,
             "is_junk": shot.pid == JUNK, "is_distractor": shot.pid == DISTRACTOR, **over}
            for shot, rel, over in files
        ]
