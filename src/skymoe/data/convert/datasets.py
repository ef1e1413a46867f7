"""The dataset readers of :mod:`skymoe.data.readers` as convert formats (SOURCE = the dataset's root or file)."""
from __future__ import annotations

from pathlib import Path

from skymoe.data.convert import ConvertOptions
from skymoe.data.convert.finish import write_images
from skymoe.data.convert.labelled import LabelledImage, read_class_file
from skymoe.data.convert.report import Converted
from skymoe.data.readers import SampleList
from skymoe.errors import DataError


def _done(samples: SampleList, options: ConvertOptions) -> Converted:
    """``--bands``: every image replaced by its RGB composite (e.g. EuroSAT's 13-band TIFFs)."""
    if options.bands:
        images = sorted({s.image for s in samples})
        stubs = [LabelledImage(Path(p), (0, 0), f"{i:05d}_{Path(p).stem}") for i, p in enumerate(images)]
        written = write_images(stubs, options)
        by_path = {str(stub.image): written[stub.name] for stub in stubs}
        for sample in samples:
            sample.image = str(by_path[sample.image])
    return Converted.from_samples(samples)


def _kwargs(options: ConvertOptions) -> dict:
    return {"on_error": options.on_error, **({"dataset": options.dataset} if options.dataset else {})}


def rsvqa(source: Path, options: ConvertOptions) -> Converted:
    from skymoe.data.readers.rsvqa import read_rsvqa

    return _done(read_rsvqa(source, options.split, **_kwargs(options)), options)


def hrvqa(source: Path, options: ConvertOptions) -> Converted:
    from skymoe.data.readers.hrvqa import read_hrvqa

    return _done(read_hrvqa(source, options.split, **_kwargs(options)), options)


def karpathy(source: Path, options: ConvertOptions) -> Converted:
    from skymoe.data.readers.captions import read_karpathy

    return _done(read_karpathy(source, options.split, image_dir=options.images, **_kwargs(options)), options)


def dior_rsvg(source: Path, options: ConvertOptions) -> Converted:
    from skymoe.data.readers.dior_rsvg import read_dior_rsvg

    task = (options.tasks or ("grounding",))[0]
    if task not in ("grounding", "region_caption") or len(options.tasks or ()) > 1:
        raise DataError(f"DIOR-RSVG gives one task, grounding or region_caption; got {list(options.tasks)}", field="tasks")
    return _done(read_dior_rsvg(source, options.split, task=task, **_kwargs(options)), options)


def conversations(source: Path, options: ConvertOptions) -> Converted:
    from skymoe.data.readers.conversation import read_conversations

    return _done(read_conversations(source, image_dir=options.images, split=options.split, **_kwargs(options)), options)


def bigearthnet(source: Path, options: ConvertOptions) -> Converted:
    from skymoe.data.readers.bigearthnet import read_bigearthnet

    return _done(read_bigearthnet(source, options.split, **_kwargs(options)), options)


def image_folder(source: Path, options: ConvertOptions) -> Converted:
    from skymoe.data.readers.image_folder import read_image_folder

    classes = list(read_class_file(options.classes).values()) if options.classes else None
    return _done(read_image_folder(source, classes=classes, split=options.split, **_kwargs(options)), options)
