"""Deterministic synthetic "worlds" with known ground truth, written as probe sets.

Each image shows one object (a shape with a colour and a texture) on a background, and may carry a
planted artifact whose presence is correlated with one class at a chosen rate: a stamp in a
corner, a background tint, or a colour cast over the whole image (``artifact_kind``). The class
is decided by one factor (``class_factor``: shape, colour or texture); every other factor is drawn
independently, so the only shortcut is the planted artifact. The artifact's concept column (and
its masks and template) can be left out of the written probe folder (``artifact_column=False``),
so that nothing names the cue. Image ``i`` depends only on ``(seed, i)``, so worlds are
reproducible bit for bit and subsets are stable.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from explainkit._io import atomic_write_text
from explainkit.errors import ConfigError

__all__ = ["World", "WorldSpec", "generate_world", "stamp_template", "write_world"]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 45, 45), "green": (45, 170, 60), "blue": (50, 80, 215),
    "yellow": (220, 200, 40), "purple": (150, 60, 190),
    "grey": (200, 200, 200),  # achromatic: hue and saturation changes leave it unchanged
}
SHAPES = ("circle", "square", "triangle", "cross")
TEXTURES = ("plain", "stripes", "dots", "grain")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "bg_dark": (35, 35, 45), "bg_light": (205, 205, 195), "bg_noise": (128, 128, 128),
}
#: How a planted artifact is drawn: a corner stamp, a tint of the background, a cast over the image.
ARTIFACT_KINDS = ("stamp", "background", "cast")
#: Colour the background artifact mixes into the background (half and half: a teal tint).
TINT_COLOUR = (20, 170, 170)
#: Colour the cast artifact mixes into the whole image, and its weight (a warm orange cast).
CAST_COLOUR, CAST_WEIGHT = (255, 150, 30), 0.3


@dataclass(frozen=True)
class WorldSpec:
    """Parameters of a synthetic world.

    Attributes
    ----------
    n_images : int
        Number of images (classes are balanced: image ``i`` has class ``i % n_classes``).
    size : int
        Image side in pixels.
    class_factor : str
        ``"shape"``, ``"colour"`` or ``"texture"``: the factor that decides the class.
    shapes, colours, textures, backgrounds : tuple of str
        Factor values; the class factor's values are the classes.
    texture_amplitude : float
        Strength of the texture modulation in 0–255 units.
    artifact : str or None
        Name of the planted artifact concept (e.g. ``"stamp"``) or ``None``.
    artifact_kind : str
        ``"stamp"`` (a yellow stamp in a random corner), ``"background"`` (the background tinted
        teal: half the drawn background, half :data:`TINT_COLOUR`) or ``"cast"`` (the whole image
        mixed with :data:`CAST_COLOUR` at :data:`CAST_WEIGHT`). The background factor (and its
        concept column) stays the drawn one.
    artifact_class : int
        Class index the artifact is correlated with.
    artifact_rate, artifact_other_rate : float
        P(artifact | artifact_class) and P(artifact | other classes).
    artifact_column : bool
        Write the artifact's concept column, masks and template (``False``: the probe folder does
        not name the cue; ``world.json`` still records it).
    seed : int
        Seed; image ``i`` is drawn from ``default_rng([seed, i])``.
    """

    n_images: int = 600
    size: int = 64
    class_factor: str = "shape"
    shapes: tuple[str, ...] = ("circle", "square", "triangle")
    colours: tuple[str, ...] = ("red", "green", "blue")
    textures: tuple[str, ...] = ("plain", "stripes", "dots")
    backgrounds: tuple[str, ...] = ("bg_dark", "bg_light", "bg_noise")
    texture_amplitude: float = 45.0
    artifact: str | None = None
    artifact_class: int = 0
    artifact_rate: float = 0.9
    artifact_other_rate: float = 0.05
    artifact_kind: str = "stamp"
    artifact_column: bool = True
    seed: int = 0

    def factor_values(self, factor: str) -> tuple[str, ...]:
        """Values of ``factor`` (shape, colour, texture, background)."""
        return {"shape": self.shapes, "colour": self.colours, "texture": self.textures,
                "background": self.backgrounds}[factor]

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names: the values of the class factor."""
        return self.factor_values(self.class_factor)

    @property
    def concept_names(self) -> tuple[str, ...]:
        """All concept columns: every factor value, then the artifact (unless ``artifact_column`` is off)."""
        names = (*self.shapes, *self.colours, *self.textures, *self.backgrounds)
        return (*names, self.artifact) if self.artifact and self.artifact_column else names

    def validate(self) -> None:
        """Raise :class:`ConfigError` for inconsistent parameters."""
        if self.class_factor not in ("shape", "colour", "texture"):
            raise ConfigError(f"class_factor must be shape, colour or texture, not {self.class_factor!r}")
        for name, values, known in (("shapes", self.shapes, SHAPES), ("colours", self.colours, COLOURS),
                                    ("textures", self.textures, TEXTURES),
                                    ("backgrounds", self.backgrounds, BACKGROUNDS)):
            unknown = [v for v in values if v not in known]
            if unknown or not values or len(set(values)) != len(values):
                raise ConfigError(f"bad {name} {values!r}: choose distinct values among {', '.join(known)}")
        if len(self.class_names) < 2:
            raise ConfigError("a world needs at least two classes")
        if not (16 <= self.size <= 512) or self.n_images < len(self.class_names):
            raise ConfigError("size must be in 16..512 and n_images at least the number of classes")
        if self.artifact is not None and not (0 <= self.artifact_class < len(self.class_names)):
            raise ConfigError("artifact_class out of range")
        if not (0 <= self.artifact_rate <= 1 and 0 <= self.artifact_other_rate <= 1):
            raise ConfigError("artifact rates must be in [0, 1]")
        if self.artifact_kind not in ARTIFACT_KINDS:
            raise ConfigError(f"artifact_kind must be one of {', '.join(ARTIFACT_KINDS)}, not {self.artifact_kind!r}")
        if self.artifact is not None and self.artifact in (*self.shapes, *self.colours, *self.textures,
                                                           *self.backgrounds):
            raise ConfigError(f"artifact name {self.artifact!r} is already a factor value")


@dataclass
class World:
    """An in-memory world: images, labels, concept table, masks and per-image factors."""

    spec: WorldSpec
    images: list[Image.Image]
    labels: np.ndarray
    concepts: np.ndarray
    object_masks: list[np.ndarray]
    artifact_masks: list[np.ndarray | None]
    factors: list[dict] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        """Relative paths the images get when written."""
        names = self.spec.class_names
        return [f"{names[int(c)]}/img_{i:05d}.png" for i, c in enumerate(self.labels)]


def stamp_template(size: int) -> Image.Image:
    """The planted stamp as an RGBA image (alpha = where it is pasted).

    A yellow square with a black frame and a black diagonal cross: unlike anything else in the
    world, so a model can only use it as a shortcut.

    Parameters
    ----------
    size : int
        Side of the world's images; the stamp is about 3/16 of it.

    Returns
    -------
    PIL.Image.Image
        RGBA stamp.
    """
    s = max(6, round(size * 3 / 16))
    im = Image.new("RGBA", (s, s), (250, 220, 0, 255))
    draw = ImageDraw.Draw(im)
    w = max(1, s // 8)
    draw.rectangle([0, 0, s - 1, s - 1], outline=(0, 0, 0, 255), width=w)
    draw.line([(0, 0), (s - 1, s - 1)], fill=(0, 0, 0, 255), width=w)
    draw.line([(0, s - 1), (s - 1, 0)], fill=(0, 0, 0, 255), width=w)
    return im


def _shape_alpha(shape: str, size: int, cx: float, cy: float, r: float) -> np.ndarray:
    scale = 4
    canvas = Image.new("L", (size * scale, size * scale), 0)
    draw = ImageDraw.Draw(canvas)
    x, y, rr = cx * scale, cy * scale, r * scale
    if shape == "circle":
        draw.ellipse([x - rr, y - rr, x + rr, y + rr], fill=255)
    elif shape == "square":
        q = rr * 0.85
        draw.rectangle([x - q, y - q, x + q, y + q], fill=255)
    elif shape == "triangle":
        draw.polygon([(x, y - rr), (x - rr * 0.95, y + rr * 0.8), (x + rr * 0.95, y + rr * 0.8)], fill=255)
    else:  # cross
        t = rr * 0.35
        draw.rectangle([x - rr, y - t, x + rr, y + t], fill=255)
        draw.rectangle([x - t, y - rr, x + t, y + rr], fill=255)
    small = canvas.resize((size, size), Image.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _texture(kind: str, size: int, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == "plain":
        return np.zeros((size, size), np.float32)
    if kind == "stripes":
        angle = rng.uniform(0, np.pi)
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / 5.0) + phase)
        return amplitude * np.sign(wave)
    if kind == "dots":
        ox, oy = rng.uniform(0, 6, size=2)
        d = np.hypot((xx + ox) % 6 - 3, (yy + oy) % 6 - 3)
        return np.where(d < 1.6, -amplitude * 1.5, amplitude * 0.3).astype(np.float32)
    return amplitude * rng.standard_normal((size, size)).astype(np.float32)  # pragma: no cover


def _render(spec: WorldSpec, i: int, stamp: Image.Image) -> tuple[Image.Image, dict, np.ndarray, np.ndarray | None]:
    rng = np.random.default_rng([spec.seed, i])
    n_classes = len(spec.class_names)
    label = i % n_classes
    f = {
        "shape": spec.shapes[rng.integers(len(spec.shapes))],
        "colour": spec.colours[rng.integers(len(spec.colours))],
        "texture": spec.textures[rng.integers(len(spec.textures))],
        "background": spec.backgrounds[rng.integers(len(spec.backgrounds))],
    }
    f[spec.class_factor] = spec.class_names[label]
    size = spec.size
    r = rng.uniform(0.22, 0.30) * size
    cx, cy = (0.5 + rng.uniform(-0.1, 0.1, size=2)) * size
    bg = np.empty((size, size, 3), np.float32)
    bg[:] = BACKGROUNDS[f["background"]]
    if f["background"] == "bg_noise":
        low = rng.normal(0, 1, size=(size // 8, size // 8, 1)).astype(np.float32)
        blobs = np.asarray(Image.fromarray(((low[..., 0] + 3) * 40).clip(0, 255).astype(np.uint8))
                           .resize((size, size), Image.BICUBIC), np.float32)[..., None]
        bg = bg * 0.5 + blobs * 0.5
    bg += rng.normal(0, 4, size=bg.shape).astype(np.float32)
    colour = np.array(COLOURS[f["colour"]], np.float32) + rng.uniform(-12, 12, size=3).astype(np.float32)
    obj = colour[None, None, :] + _texture(f["texture"], size, rng, spec.texture_amplitude)[..., None]
    alpha = _shape_alpha(f["shape"], size, cx, cy, r)[..., None]
    has_artifact = False
    if spec.artifact:
        rate = spec.artifact_rate if label == spec.artifact_class else spec.artifact_other_rate
        has_artifact = bool(rng.uniform() < rate)
    artifact_mask = None
    if has_artifact and spec.artifact_kind == "background":
        bg = (bg + np.asarray(TINT_COLOUR, np.float32)) / 2
        artifact_mask = alpha[..., 0] <= 0.5
    img = bg * (1 - alpha) + obj * alpha
    if has_artifact and spec.artifact_kind == "cast":
        img = img * (1 - CAST_WEIGHT) + np.asarray(CAST_COLOUR, np.float32) * CAST_WEIGHT
    image = Image.fromarray(img.clip(0, 255).round().astype(np.uint8), "RGB")
    if has_artifact and spec.artifact_kind == "stamp":
        s = stamp.size[0]
        m = max(1, size // 32)
        corners = [(m, m), (size - s - m, m), (m, size - s - m), (size - s - m, size - s - m)]
        x0, y0 = corners[rng.integers(4)]
        image.paste(stamp, (int(x0), int(y0)), stamp)
        artifact_mask = np.zeros((size, size), bool)
        artifact_mask[y0 : y0 + s, x0 : x0 + s] = np.asarray(stamp)[..., 3] > 127
    f["label"] = label
    f[spec.artifact or "artifact"] = has_artifact
    return image, f, alpha[..., 0] > 0.5, artifact_mask


def generate_world(spec: WorldSpec) -> World:
    """Render every image of ``spec`` in memory.

    Parameters
    ----------
    spec : WorldSpec
        The world's parameters.

    Returns
    -------
    World
        Images, labels, concept table (N, C) and masks.
    """
    spec.validate()
    stamp = stamp_template(spec.size)
    images, factors, objs, arts = [], [], [], []
    for i in range(spec.n_images):
        image, f, obj, art = _render(spec, i, stamp)
        images.append(image)
        factors.append(f)
        objs.append(obj)
        arts.append(art)
    names = spec.concept_names
    concepts = np.zeros((spec.n_images, len(names)), bool)
    for i, f in enumerate(factors):
        for key in ("shape", "colour", "texture", "background"):
            concepts[i, names.index(f[key])] = True
        if spec.artifact in names and f[spec.artifact]:
            concepts[i, names.index(spec.artifact)] = True
    labels = np.array([f["label"] for f in factors], np.int64)
    return World(spec, images, labels, concepts, objs, arts, factors)


def write_world(spec: WorldSpec, root: str | Path) -> Path:
    """Generate a world and write it as a probe folder.

    Layout: ``<class>/img_NNNNN.png``, ``concepts.csv``, ``descriptions.json`` (artifact flagged; each
    concept's ``factor`` and the mask ``region`` it covers: ``object``, or ``~object`` for backgrounds),
    ``masks/object/...``, ``masks/<artifact>/...``, ``artifacts/<artifact>.png`` (RGBA template) and
    ``world.json`` (the spec and each image's factors). With ``artifact_column=False`` the
    artifact's column, masks and template are not written.

    Parameters
    ----------
    spec : WorldSpec
        The world's parameters.
    root : str or Path
        Output folder (created; must be empty or absent).

    Returns
    -------
    Path
        ``root``.
    """
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise ConfigError(f"output folder {root} is not empty")
    world = generate_world(spec)
    for name in spec.class_names:
        (root / name).mkdir(parents=True, exist_ok=True)
    named = bool(spec.artifact and spec.artifact_column)
    mask_dirs = ["object"] + ([spec.artifact] if named and spec.artifact_kind != "cast" else [])
    for m in mask_dirs:
        for name in spec.class_names:
            (root / "masks" / m / name).mkdir(parents=True, exist_ok=True)
    for sid, image, obj, art in zip(world.ids, world.images, world.object_masks, world.artifact_masks):
        image.save(root / sid)
        Image.fromarray(obj.astype(np.uint8) * 255).save(root / "masks" / "object" / sid)
        if art is not None and named:
            Image.fromarray(art.astype(np.uint8) * 255).save(root / "masks" / spec.artifact / sid)
    header = ["path", *spec.concept_names]
    lines = [",".join(header)]
    lines += [",".join([sid, *("1" if v else "0" for v in row)]) for sid, row in zip(world.ids, world.concepts)]
    atomic_write_text(root / "concepts.csv", "\n".join(lines) + "\n")
    descriptions = {str(k): _describe_concept(name, spec) for k, name in enumerate(spec.concept_names)}
    atomic_write_text(root / "descriptions.json", json.dumps(descriptions, indent=1))
    if named and spec.artifact_kind == "stamp":
        (root / "artifacts").mkdir(exist_ok=True)
        stamp_template(spec.size).save(root / "artifacts" / f"{spec.artifact}.png")
    meta = {"spec": asdict(spec), "class_names": list(spec.class_names),
            "samples": [{"id": sid, **f} for sid, f in zip(world.ids, world.factors)]}
    atomic_write_text(root / "world.json", json.dumps(meta, indent=1))
    return root


def _describe_concept(name: str, spec: WorldSpec) -> dict:
    """A concept's description: its factor, and the mask region it covers (for Network Dissection)."""
    if name == spec.artifact:
        what = {"stamp": "a planted stamp", "background": "a planted background tint",
                "cast": "a planted colour cast over the image"}[spec.artifact_kind]
        return {"name": name, "definition": f"{what} (spurious cue)", "artifact": True, "factor": name}
    for factor in ("shape", "colour", "texture", "background"):
        if name in spec.factor_values(factor):
            return {"name": name, "definition": f"{factor}: {name}", "artifact": False, "factor": factor,
                    "region": "~object" if factor == "background" else "object"}
    raise AssertionError(name)  # pragma: no cover
