"""Turn one scene into samples for every task and granularity.

Each builder reads only the scene's object list (plus the conventions in
:mod:`skymoe.data.mgrs_mini.facts`) and records what it asked in
``Sample.meta["query"]``, so the tests can recompute every answer independently.
Answers are balanced where the question allows it: yes/no questions draw the
answer first (50/50) and then a question that has it; count questions draw the
answer from the distinct counts the scene offers (0 included), larger counts favoured.
"""
from __future__ import annotations

import numpy as np

from skymoe.data.boxes import format_box
from skymoe.data.mgrs_mini.catalogue import CATEGORIES, CATEGORY_BY_NAME, NUMBER_WORDS, SCENE_CLASSES
from skymoe.data.mgrs_mini.facts import (
    OPPOSITE,
    QUADRANTS,
    RELATIONS,
    Region,
    count_by_category,
    in_region,
    quadrant_region,
    random_box_region,
    relation_holds,
    unique_references,
)
from skymoe.data.mgrs_mini.scene import Scene
from skymoe.data.prompts import TEMPLATES
from skymoe.data.prompts import a as _a
from skymoe.data.prompts import pick as _pick
from skymoe.data.schema import Box, Granularity, Sample, Task, Turn

DATASET = "mgrs_mini"

def _where(region: Region | None, box_text: str | None) -> tuple[str, str]:
    """('in the image', 'the image') / ('in the top left quadrant', ...) / ('in the region [..]', ...)."""
    if region is None:
        place = "the image"
    elif region.quadrant:
        place = f"the {region.quadrant} quadrant"
    else:
        place = f"the region {box_text}"
    return f"in {place}", place


def _contents(scene: Scene, indices: list[int]) -> str:
    """'three buildings, two red vehicles and a ship' (a colour is named where all instances share it)."""
    parts = []
    for cat in CATEGORIES:
        members = [scene.objects[i] for i in indices if scene.objects[i].category == cat.name]
        if not members:
            continue
        colours = {o.colour for o in members}
        colour = f"{members[0].colour} " if len(colours) == 1 and len(cat.colours) > 1 else ""
        n = len(members)
        parts.append(_a(colour + cat.name) if n == 1 else f"{NUMBER_WORDS[n]} {colour}{cat.plural}")
    if not parts:
        return "no objects of interest"
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


class SceneQuestions:
    """Builds the samples of one scene; ``rng`` decides templates, targets and regions."""

    def __init__(self, scene: Scene, image_path: str, rng: np.random.Generator):
        self.scene, self.image_path, self.rng = scene, image_path, rng
        self.size = scene.size
        self.image_size = (scene.size, scene.size)
        self.samples: list[Sample] = []

    # ------------------------------------------------------------------ helpers

    def _box_text(self, box) -> str:
        return format_box(Box(*box), self.image_size)

    def _region(self) -> Region:
        """A quadrant or a box region (half each); falls back to a quadrant when no clean box exists."""
        if self.rng.random() < 0.5:
            region = random_box_region(self.scene.objects, self.size, self.rng)
            if region is not None:
                return region
        return quadrant_region(_pick(self.rng, QUADRANTS))

    def _region_text(self, region: Region | None) -> tuple[str, str]:
        box_text = self._box_text(region.pixels(self.size)) if region is not None else None
        return _where(region, box_text)

    def _boxes(self, indices) -> list[Box]:
        return [Box(*self.scene.objects[i].box, label=self.scene.objects[i].category) for i in indices]

    def _add(self, kind: str, task: Task, granularity: Granularity, question: str, answer: str, *,
             question_type: str, boxes: list[Box] = (), query: dict | None = None) -> None:
        self.samples.append(Sample(
            id=f"{self.scene.id}-{len(self.samples):02d}-{kind}",
            image=self.image_path,
            task=task,
            granularity=granularity,
            conversation=[Turn("user", question), Turn("assistant", answer)],
            image_size=self.image_size,
            boxes=list(boxes),
            question_type=question_type,
            dataset=DATASET,
            split=self.scene.split,
            meta={"scene": self.scene.id, "query": {"kind": kind, **(query or {})}},
        ))

    # ------------------------------------------------------------------ image level

    def classification(self) -> None:
        classes = ", ".join(SCENE_CLASSES)
        question = _pick(self.rng, TEMPLATES["classification"]).format(classes=classes)
        self._add("classification", Task.CLASSIFICATION, Granularity.IMAGE, question, self.scene.scene_class,
                  question_type="scene")

    def caption(self) -> None:
        a_scene = _a(self.scene.scene_class)
        answer = _pick(self.rng, TEMPLATES["caption_answer"]).format(
            a_scene=a_scene, A_scene=a_scene.capitalize(), contents=_contents(self.scene, list(range(len(self.scene.objects)))))
        self._add("caption", Task.CAPTION, Granularity.IMAGE, _pick(self.rng, TEMPLATES["caption"]), answer,
                  question_type="caption")

    def presence(self, region: Region | None) -> None:
        members = in_region(self.scene.objects, region, self.size)
        counts = count_by_category(self.scene.objects, members)
        want_yes = self.rng.random() < 0.5
        pool = [c.name for c in CATEGORIES if (counts.get(c.name, 0) > 0) == want_yes]
        if not pool:  # e.g. every category is in the region: only "yes" is possible
            pool, want_yes = [c.name for c in CATEGORIES if (counts.get(c.name, 0) > 0) != want_yes], not want_yes
        category = _pick(self.rng, pool)
        where, place = self._region_text(region)
        question = _pick(self.rng, TEMPLATES["presence"]).format(a_cat=_a(category), where=where, where_short=place)
        hits = [i for i in members if self.scene.objects[i].category == category]
        self._add("presence", Task.VQA, _granularity(region), question, "yes" if want_yes else "no",
                  question_type="presence", boxes=self._boxes(hits), query=_query(category=category, region=region))

    def _count_target(self, region: Region | None) -> tuple[str, list[int]]:
        members = in_region(self.scene.objects, region, self.size)
        counts = count_by_category(self.scene.objects, members)
        by_value: dict[int, list[str]] = {}
        for c in CATEGORIES:
            by_value.setdefault(counts.get(c.name, 0), []).append(c.name)
        values = sorted(by_value)
        # Scenes offer 0 and 1 far more often than larger counts (most categories are absent or single,
        # regions hold few objects); weighting a value by 2**min(v, 3) spreads the answers.
        weights = np.array([2.0 ** min(v, 3) for v in values])
        value = values[int(self.rng.choice(len(values), p=weights / weights.sum()))]
        category = _pick(self.rng, by_value[value])
        return category, [i for i in members if self.scene.objects[i].category == category]

    def count(self, region: Region | None, *, task: Task = Task.VQA) -> None:
        category, hits = self._count_target(region)
        where, _ = self._region_text(region)
        key = "count" if task == Task.VQA else "counting"
        question = _pick(self.rng, TEMPLATES[key]).format(plural=CATEGORY_BY_NAME[category].plural, where=where)
        self._add(key, task, _granularity(region), question, str(len(hits)), question_type="count",
                  boxes=self._boxes(hits), query=_query(category=category, region=region))

    def colour(self, region: Region | None) -> None:
        """Colour of one object named without its colour (in a region: the only one of its category there)."""
        if region is None:
            options = [(i, r) for i in range(len(self.scene.objects))
                       for r in unique_references(i, self.scene.objects, self.size, with_colour=False)]
        else:
            members = in_region(self.scene.objects, region, self.size)
            counts = count_by_category(self.scene.objects, members)
            options = [(i, None) for i in members if counts[self.scene.objects[i].category] == 1]
        options = [(i, r) for i, r in options if self.scene.objects[i].category != "tree cluster"]  # trees are always green
        if not options:
            return
        index, ref = _pick(self.rng, options)
        obj = self.scene.objects[index]
        if ref is None:
            ref_text = f"the {obj.category} {self._region_text(region)[0]}"
        else:
            ref_text = ref.text()
        question = _pick(self.rng, TEMPLATES["colour"]).format(ref=ref_text)
        query = _query(target=index, region=region, reference=ref.to_dict() if ref else None, category=obj.category)
        self._add("colour", Task.VQA, _granularity(region), question, obj.colour, question_type="colour",
                  boxes=self._boxes([index]), query=query)

    def position(self) -> None:
        objects = self.scene.objects
        refs = {i: unique_references(i, objects, self.size) for i in range(len(objects))}
        pairs = [(a, b, rel) for a in refs for b in refs if a != b and refs[a] and refs[b]
                 for rel in RELATIONS if relation_holds(objects[a], objects[b], rel, self.size)]
        if not pairs:
            return
        a, b, true_relation = _pick(self.rng, pairs)
        want_yes = self.rng.random() < 0.5
        relation = true_relation if want_yes else OPPOSITE[true_relation]
        ref_a, ref_b = _pick(self.rng, refs[a]), _pick(self.rng, refs[b])
        question = _pick(self.rng, TEMPLATES["position"]).format(a=ref_a.text(), b=ref_b.text(), relation=relation)
        query = _query(target=a, other=b, relation=relation, reference=ref_a.to_dict(), other_reference=ref_b.to_dict())
        self._add("position", Task.VQA, Granularity.IMAGE, question, "yes" if want_yes else "no",
                  question_type="position", boxes=self._boxes([a, b]), query=query)

    def comparison(self) -> None:
        counts = count_by_category(self.scene.objects, list(range(len(self.scene.objects))))
        names = [c.name for c in CATEGORIES]
        pairs = [(x, y) for x in names for y in names if counts.get(x, 0) > counts.get(y, 0)]  # x has more
        x, y = _pick(self.rng, pairs)
        more = _pick(self.rng, ("more", "fewer"))
        want_yes = self.rng.random() < 0.5
        first, second = (x, y) if (more == "more") == want_yes else (y, x)
        question = _pick(self.rng, TEMPLATES["comparison"]).format(
            more=more, plural_a=CATEGORY_BY_NAME[first].plural, plural_b=CATEGORY_BY_NAME[second].plural)
        self._add("comparison", Task.VQA, Granularity.IMAGE, question, "yes" if want_yes else "no",
                  question_type="comparison", query=_query(category=first, other_category=second, relation=more))

    # ------------------------------------------------------------------ objects and regions

    def grounding(self) -> None:
        options = [(i, r) for i in range(len(self.scene.objects)) for r in unique_references(i, self.scene.objects, self.size)]
        if not options:  # rare: the generator plans one single-instance category in every scene
            return
        index, ref = _pick(self.rng, options)
        question = _pick(self.rng, TEMPLATES["grounding"]).format(ref=ref.text())
        obj = self.scene.objects[index]
        self._add("grounding", Task.GROUNDING, Granularity.OBJECT, question, self._box_text(obj.box),
                  question_type="grounding", boxes=self._boxes([index]), query=_query(target=index, reference=ref.to_dict()))

    def object_caption(self) -> None:
        index = int(self.rng.integers(len(self.scene.objects)))
        obj = self.scene.objects[index]
        question = _pick(self.rng, TEMPLATES["region_caption_object"]).format(box=self._box_text(obj.box))
        self._add("object_caption", Task.REGION_CAPTION, Granularity.OBJECT, question, _a(f"{obj.colour} {obj.category}"),
                  question_type="object_caption", boxes=self._boxes([index]), query=_query(target=index))

    def region_caption(self) -> None:
        region = random_box_region(self.scene.objects, self.size, self.rng) or quadrant_region(_pick(self.rng, QUADRANTS))
        box = region.pixels(self.size)
        question = _pick(self.rng, TEMPLATES["region_caption_region"]).format(box=self._box_text(box))
        members = in_region(self.scene.objects, region, self.size)
        answer = _contents(self.scene, members)
        self._add("region_caption", Task.REGION_CAPTION, Granularity.REGION, question, answer[0].upper() + answer[1:] + ".",
                  question_type="region_caption", boxes=[Box(*box, label="region")], query=_query(region=region))

    def build(self) -> list[Sample]:
        """All samples of the scene, in a fixed order (every task x granularity the scene supports)."""
        self.classification()
        self.caption()
        self.presence(None)
        self.count(None)
        self.colour(None)
        self.position()
        self.comparison()
        self.presence(self._region())
        self.count(self._region())
        self.colour(self._region())
        self.grounding()
        self.object_caption()
        self.region_caption()
        self.count(None, task=Task.COUNTING)
        self.count(self._region(), task=Task.COUNTING)
        return self.samples


def _granularity(region: Region | None) -> Granularity:
    return Granularity.IMAGE if region is None else Granularity.REGION


def _query(*, region: Region | None = None, **fields) -> dict:
    query = {k: v for k, v in fields.items() if v is not None}
    if region is not None:
        query["region"] = list(region.grid)
        if region.quadrant:
            query["quadrant"] = region.quadrant
    return query


def scene_samples(scene: Scene, image_path: str, rng: np.random.Generator) -> list[Sample]:
    return SceneQuestions(scene, image_path, rng).build()
