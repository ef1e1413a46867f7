"""The question templates, in one place: MGRS-mini, the converters and inference all ask with these.

One trained model answers every source's samples only if every source asks the
same way: MGRS-mini (:mod:`skymoe.data.mgrs_mini.questions`), the label
converters (:mod:`skymoe.data.convert`) and the inference pipeline's fixed
prompts (:data:`PROMPTS`) all draw from :data:`TEMPLATES`.
"""
from __future__ import annotations

import numpy as np

from skymoe.data.schema import Task

TEMPLATES: dict[str, tuple[str, ...]] = {
    "classification": (
        "What type of scene is this? Answer with one of: {classes}.",
        "Classify this remote-sensing scene ({classes}).",
        "Which scene category fits this image best: {classes}?",
    ),
    "caption": ("Describe this image.", "Write a short caption for this aerial image.", "What does this scene show?"),
    "caption_answer": ("An aerial view of {a_scene} with {contents}.", "{A_scene} seen from above, with {contents}.",
                       "This remote-sensing image shows {a_scene} containing {contents}."),
    "presence": ("Is there {a_cat} {where}?", "Does {where_short} contain {a_cat}?", "Can you see {a_cat} {where}?"),
    "count": ("How many {plural} are there {where}?", "What is the number of {plural} {where}?", "How many {plural} can you see {where}?"),
    "colour": ("What colour is {ref}?", "What is the colour of {ref}?", "Which colour does {ref} have?"),
    "position": ("Is {a} {relation} {b}?", "Is it true that {a} is {relation} {b}?", "Looking at the image, is {a} {relation} {b}?"),
    "comparison": ("Are there {more} {plural_a} than {plural_b}?", "Does the image contain {more} {plural_a} than {plural_b}?",
                   "Compared with the {plural_b}, are there {more} {plural_a}?"),
    "grounding": ("Where is {ref}? Answer with a box.", "Locate {ref}.", "Give the bounding box of {ref}."),
    "region_caption_object": ("What is the object at {box}?", "Describe the object in {box}.", "Identify the object at {box}."),
    "region_caption_region": ("Describe the region {box}.", "What is in the region {box}?", "List the objects in the region {box}."),
    "counting": ("Count the {plural} {where}.", "How many {plural} are {where}? Answer with a number.",
                 "Give the number of {plural} {where}."),
}

MULTILABEL_QUESTION = "Which land-cover classes are present in this image?"
LABEL_SEPARATOR = "; "  # multi-label answers: sorted labels joined by this (class names may hold commas)

# Fixed prompts of the inference pipeline: the first phrasing of each template, so a trained model recognises the task.
PROMPTS = {
    Task.CAPTION: TEMPLATES["caption"][0],
    Task.CLASSIFICATION: "What type of scene is this?",  # the classification template without its class list
    Task.MULTILABEL: MULTILABEL_QUESTION,
    Task.GROUNDING: TEMPLATES["grounding"][0].format(ref="{query}"),
    Task.REGION_CAPTION: TEMPLATES["region_caption_region"][0],
    Task.COUNTING: TEMPLATES["count"][0].format(plural="{object}", where="in the image"),
}


def pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def a(noun: str) -> str:
    """'a ship' / 'an airport'."""
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def plural(noun: str) -> str:
    """English plural of a class name's last word ('storage tank' -> 'storage tanks', 'bus' -> 'buses')."""
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in ("a", "e", "i", "o", "u"):
        return noun[:-1] + "ies"
    return noun + "s"
