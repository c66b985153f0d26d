"""Small report images for prototypes: the patch, its perturbed versions, boxes on test images."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw

from explainkit.loading.handle import ModelHandle
from explainkit.prototypes.adapters import PrototypeAdapter
from explainkit.prototypes.perturb import Perturbation
from explainkit.report.images import thumbnail, to_data_uri

__all__ = ["PATCH_SIDE", "VIEW_SIDE", "prototype_box", "views", "with_box"]

#: Longest side of a patch thumbnail and of a whole-image thumbnail, in pixels.
PATCH_SIDE = 64
VIEW_SIDE = 96


def prototype_box(adapter: PrototypeAdapter, handle: ModelHandle, image: Image.Image, prototype: int
                  ) -> tuple[int, int, int, int]:
    """ProtoPNet's 95th-percentile box of ``prototype`` on ``image``, in model-input pixels (y0, y1, x0, x1)."""
    return adapter.patch_box(handle, handle.preprocess([image]).to(handle.device()), prototype)


def with_box(image: Image.Image, box: tuple[int, int, int, int], colour: tuple[int, int, int] = (255, 210, 0)
             ) -> Image.Image:
    """A copy of ``image`` with the (y0, y1, x0, x1) box outlined."""
    out = image.copy()
    y0, y1, x0, x1 = box
    ImageDraw.Draw(out).rectangle([x0, y0, x1 - 1, y1 - 1], outline=colour, width=max(1, min(out.size) // 48))
    return out


def views(handle: ModelHandle, image: Image.Image, perturbations: Sequence[Perturbation],
          box: tuple[int, int, int, int] | None, side: int) -> list[str]:
    """Data URIs of the original and each perturbed image, at model-input resolution, cropped to ``box``.

    Parameters
    ----------
    handle : ModelHandle
        Gives the preprocessing (resize and crop to the model input).
    image : PIL.Image.Image
        The original image at source resolution (perturbations are applied there, as in the analysis).
    perturbations : sequence of Perturbation
        The characteristics.
    box : tuple of int or None
        (y0, y1, x0, x1) crop in model-input pixels, or ``None`` for the whole image.
    side : int
        Longest side of each thumbnail.

    Returns
    -------
    list of str
        ``1 + C`` PNG data URIs: the original first.
    """
    prep = handle.require_preprocessing()
    out = []
    for im in [image, *(p(image) for p in perturbations)]:
        resized = prep.resize_image(im)
        if box is not None:
            y0, y1, x0, x1 = box
            resized = resized.crop((x0, y0, x1, y1))
        out.append(to_data_uri(thumbnail(resized, side)))
    return out

