"""Language of the shapes world: captions, question forms with several phrasings, answers,
conversations, and a parser that maps a question back to its form (for evaluating
self-questions).

Every phrasing is a template with slots: {obj} (`red circle`), {shape}, {colour}, {shapes}
(plural shape), {attr} (`red`/`big`), {rel} (`to the left of`...). The same templates drive
generation and parsing, so a generated question is valid exactly when the parser recognises it.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .scene import BACKGROUNDS, COLOURS, NUMBER_WORDS, POSITIONS, SHAPES, SIZES, Scene, SceneObject

FORMS = ["count", "colour_of_shape", "shape_of_colour", "existence", "position", "size", "relation",
         "background", "count_by_attribute"]

PHRASINGS: Dict[str, List[str]] = {
    "count": ["How many shapes are there?", "How many objects are in the image?",
              "How many shapes can you see?", "What is the number of shapes in the image?"],
    "colour_of_shape": ["What color is the {shape}?", "What is the color of the {shape}?",
                        "Which color does the {shape} have?"],
    "shape_of_colour": ["What shape is the {colour} object?", "What is the {colour} shape?",
                        "Which shape is {colour}?"],
    "existence": ["Is there {art} {obj}?", "Is there {art} {obj} in the image?", "Can you see {art} {obj}?",
                  "Does the image contain {art} {obj}?"],
    "position": ["Where is the {obj}?", "Where is the {obj} located?", "In which part of the image is the {obj}?"],
    "size": ["Is the {obj} big or small?", "Is the {obj} small or big?", "What size is the {obj}?",
             "How big is the {obj}?"],
    "relation": ["What is {rel} the {obj}?", "Which shape is {rel} the {obj}?"],
    "background": ["What color is the background?", "What is the color of the background?",
                   "Which color is the background?"],
    "count_by_attribute": ["How many {attr} shapes are there?", "How many {shapes} are there?",
                           "How many {attr} shapes are in the image?", "How many {shapes} can you see?"],
}

RELATIONS = ["to the left of", "to the right of", "above", "below"]
PLURAL = {s: s + ("es" if s.endswith("s") or s.endswith("x") else "s") for s in SHAPES}
SINGULAR = {p: s for s, p in PLURAL.items()}
ARTICLE = lambda w: "an" if w[0] in "aeiou" else "a"  # noqa: E731

BRIEF_PROMPT = "Provide a brief description of the given image, your answer should be in one sentence."
DETAILED_PROMPT = "Can you describe the image in detail?"


def number(n: int) -> str:
    return NUMBER_WORDS[n]


def _a(name: str) -> str:
    return f"{ARTICLE(name)} {name}"


def _join(items: List[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def where(cell_or_pos) -> str:
    """"at the top left" ... "at the center": one preposition for every place. With "on the left" and
    "in the center" the decoder had to choose the preposition, and so the place, one word before
    the place word, where it does not look the object up (training/README.md, session 7)."""
    pos = POSITIONS[cell_or_pos] if isinstance(cell_or_pos, int) else cell_or_pos
    return f"at the {pos}"


# ----------------------------------------------------------------------------- captions

def brief_caption(scene: Scene, rng: Optional[random.Random] = None) -> str:
    objs = [_a(o.name) for o in scene.ordered()]
    bg = scene.background
    k = 0 if rng is None else rng.randrange(3)
    if k == 0:
        s = f"{_join(objs)} on {_a(bg)} background."
    elif k == 1:
        s = f"The image shows {_join(objs)} on {_a(bg)} background."
    else:
        n = len(objs)
        s = f"{number(n).capitalize()} {'shape' if n == 1 else 'shapes'} on {_a(bg)} background: {_join(objs)}."
    return s[0].upper() + s[1:]


def detailed_caption(scene: Scene, rng: Optional[random.Random] = None) -> str:
    n = len(scene.objects)
    k = 0 if rng is None else rng.randrange(2)
    head = (f"The image shows {number(n)} {'shape' if n == 1 else 'shapes'} on {_a(scene.background)} background."
            if k == 0 else
            f"There {'is' if n == 1 else 'are'} {number(n)} {'shape' if n == 1 else 'shapes'} on "
            f"{_a(scene.background)} background.")
    parts = [head]
    for o in scene.ordered():
        parts.append(f"{_a(o.name).capitalize()} is {where(o.cell)}.")
    return " ".join(parts)


# ----------------------------------------------------------------------------- relations

def related(scene: Scene, obj: SceneObject, rel: str) -> List[SceneObject]:
    """Objects `rel` obj: same row (left/right) or same column (above/below), nearest first."""
    at = scene.by_cell()
    return [at[c] for c in cells_towards(obj.cell, rel) if c in at]


def what_is_at(scene: Scene, cell: int) -> str:
    """"at the top left, there is a small blue square" / "at the top, there is nothing": what a
    relation answer says at each cell, and a cell question's answer."""
    o = scene.by_cell().get(cell)
    return f"{where(cell)}, there is {_a(o.name) if o else 'nothing'}"


def cells_towards(cell: int, rel: str) -> List[int]:
    """The grid cells `rel` a cell, nearest first."""
    row, col = divmod(cell, 3)
    if rel == "to the left of":
        return [row * 3 + c for c in range(col - 1, -1, -1)]
    if rel == "to the right of":
        return [row * 3 + c for c in range(col + 1, 3)]
    if rel == "above":
        return [r * 3 + col for r in range(row - 1, -1, -1)]
    return [r * 3 + col for r in range(row + 1, 3)]


# ----------------------------------------------------------------------------- questions

@dataclass
class Question:
    form: str
    text: str
    slots: Dict[str, str]
    answer: str  # the reference answer sentence
    key: str  # what a correct answer must contain (number word, colour, ...), "|"-separated for several


def _attr_count_answer(n: int, plural: str, singular: str) -> str:
    if n == 0:
        return f"There are no {plural}."
    if n == 1:
        return f"There is one {singular}."
    return f"There are {number(n)} {plural}."


def answer_for(scene: Scene, form: str, slots: Dict[str, str]) -> Tuple[str, str]:
    """(answer sentence, key) for a question of `form` with `slots`, or raises ValueError when the
    question does not apply to the scene (ambiguous or about an absent object)."""
    objs = scene.ordered()
    if form == "count":
        n = len(objs)
        return (f"There {'is' if n == 1 else 'are'} {number(n)} {'shape' if n == 1 else 'shapes'}.", number(n))
    if form == "background":
        return f"The background is {scene.background}.", scene.background
    if form == "colour_of_shape":
        found = scene.find(shape=slots["shape"])
        if len(found) != 1:
            raise ValueError("shape not unique")
        return f"The {slots['shape']} is {found[0].colour}.", found[0].colour
    if form == "shape_of_colour":
        found = scene.find(colour=slots["colour"])
        if len(found) != 1:
            raise ValueError("colour not unique")
        return f"The {slots['colour']} object is {_a(found[0].shape)}.", found[0].shape
    if form == "existence":
        colour, shape = _split_obj(slots["obj"])
        if scene.find(colour=colour, shape=shape):
            return f"Yes, there is {_a(slots['obj'])}.", "yes"
        return f"No, there is no {slots['obj']}.", "no"
    if form == "count_by_attribute":
        n = len(counted(scene, slots))
        if "attr" in slots:
            a = slots["attr"]
            return _attr_count_answer(n, f"{a} shapes", f"{a} shape"), number(n) if n else "no"
        s = slots["shapes"]
        return _attr_count_answer(n, s, SINGULAR[s]), number(n) if n else "no"
    # forms about one object present in the scene
    colour, shape = _split_obj(slots["obj"])
    found = scene.find(colour=colour, shape=shape)
    if not found:
        raise ValueError("object not in scene")
    o = found[0]
    if form == "position":
        return f"The {o.ref} is {where(o.cell)}.", o.position
    if form == "size":
        return f"The {o.ref} is {o.size}.", o.size
    if form == "relation":
        rel = slots["rel"]
        rs = related(scene, o, rel)
        # the object asked about and its place, then cell by cell towards `rel`, nearest first,
        # what is in each: every "nothing" or "a blue square" is then a lookup of one place,
        # not a comparison of two objects' places (training/README.md, sessions 9 and 10)
        lead = f"{rel[0].upper()}{rel[1:]} the {o.ref} {where(o.cell)}"
        key = "|".join(r.ref for r in rs) if rs else "nothing"
        cells = cells_towards(o.cell, rel)
        if not cells:
            return f"{lead}, there is nothing.", key
        return f"{lead}: " + "; ".join(what_is_at(scene, c) for c in cells) + ".", key
    raise ValueError(form)


def counted(scene: Scene, slots: Dict[str, str]) -> List[SceneObject]:
    """The objects a count-by-attribute question counts: of a colour or size ("attr"), or of a shape
    ("shapes", the plural)."""
    if "attr" in slots:
        a = slots["attr"]
        return scene.find(colour=a) if a in COLOURS else scene.find(size=a)
    return scene.find(shape=SINGULAR[slots["shapes"]])


def _split_obj(obj: str) -> Tuple[str, str]:
    colour, shape = obj.split(" ")
    return colour, shape


def sample_question(scene: Scene, rng: random.Random, form: Optional[str] = None,
                    forms: Sequence[str] = FORMS) -> Question:
    """A question of `form` (else of a form drawn from `forms`, where a form listed twice is drawn
    twice as often) that applies to the scene."""
    objs = scene.ordered()
    forms = [form] if form else forms
    for _ in range(100):
        f = rng.choice(forms)
        slots: Dict[str, str] = {}
        if f == "colour_of_shape":
            cands = [o for o in objs if len(scene.find(shape=o.shape)) == 1]
            if not cands:
                continue
            slots["shape"] = rng.choice(cands).shape
        elif f == "shape_of_colour":
            cands = [o for o in objs if len(scene.find(colour=o.colour)) == 1]
            if not cands:
                continue
            slots["colour"] = rng.choice(cands).colour
        elif f == "existence":
            if rng.random() < 0.5:
                slots["obj"] = rng.choice(objs).ref
            else:  # a near miss: shares colour or shape with an object present, half the time
                while True:
                    if rng.random() < 0.6:
                        o = rng.choice(objs)
                        c, s = (o.colour, rng.choice(SHAPES)) if rng.random() < 0.5 else (rng.choice(COLOURS), o.shape)
                    else:
                        c, s = rng.choice(COLOURS), rng.choice(SHAPES)
                    if not scene.find(colour=c, shape=s):
                        break
                slots["obj"] = f"{c} {s}"
            slots["art"] = ARTICLE(slots["obj"])
        elif f in ("position", "size"):
            slots["obj"] = rng.choice(objs).ref
        elif f == "relation":
            o = rng.choice(objs)
            slots["obj"] = o.ref
            rels = [r for r in RELATIONS if related(scene, o, r)]
            # answers that name an object half the time when possible
            slots["rel"] = rng.choice(rels) if rels and rng.random() < 0.6 else rng.choice(RELATIONS)
        elif f == "count_by_attribute":
            if rng.random() < 0.55:
                present = rng.random() < 0.75
                pool = [o.colour for o in objs] if present else COLOURS
                a = rng.choice(pool) if rng.random() < 0.7 else rng.choice(SIZES)
                slots["attr"] = a
            else:
                shape = rng.choice([o.shape for o in objs]) if rng.random() < 0.75 else rng.choice(SHAPES)
                slots["shapes"] = PLURAL[shape]
        return _question(scene, rng, f, slots)
    raise RuntimeError("no applicable question")


def _question(scene: Scene, rng: random.Random, form: str, slots: Dict[str, str]) -> Question:
    """The question of `form` with `slots`, in one of its phrasings, and its answer."""
    templates = PHRASINGS[form]
    if form == "count_by_attribute":
        templates = [t for t in templates if ("{attr}" in t) == ("attr" in slots)]
    text = rng.choice(templates).format(**slots)
    answer, key = answer_for(scene, form, slots)
    return Question(form, text, slots, answer, key)


def shared_count_question(scene: Scene, rng: random.Random) -> Question:
    """A count by attribute whose answer is two or more. `sample_question`'s mix asks one 13% of
    the time, too rarely to learn: models trained on it answer "one" where two objects share a
    colour or shape. Raises RuntimeError where no attribute is shared."""
    objs = scene.ordered()
    attrs = [{"attr": a} for a in sorted({o.colour for o in objs} | {o.size for o in objs})]
    shapes = [{"shapes": PLURAL[s]} for s in sorted({o.shape for o in objs})]
    shared = [slots for slots in attrs + shapes if len(counted(scene, slots)) >= 2]
    if not shared:
        raise RuntimeError("no attribute is shared")
    return _question(scene, rng, "count_by_attribute", rng.choice(shared))


def cell_question(scene: Scene, rng: random.Random) -> Question:
    """A training-only question about one grid cell, not one of the world's forms: "What is at the
    top left?" -> "At the top left, there is a small blue square." (or "..., there is nothing."),
    the step a relation answer takes at every cell, asked alone (session 11). Half the cells asked
    hold an object, where there is an empty one."""
    at = scene.by_cell()
    empty = [c for c in range(9) if c not in at]
    cell = rng.choice(empty) if empty and rng.random() < 0.5 else rng.choice(sorted(at))
    answer = what_is_at(scene, cell)
    return Question("cell", f"What is {where(cell)}?", {"cell": POSITIONS[cell]},
                    f"{answer[0].upper()}{answer[1:]}.", at[cell].ref if cell in at else "nothing")


# ----------------------------------------------------------------------------- parsing

_SLOT_RE = {
    "shape": "|".join(SHAPES),
    "colour": "|".join(COLOURS),
    "obj": "(?:%s) (?:%s)" % ("|".join(COLOURS), "|".join(SHAPES)),
    "rel": "|".join(RELATIONS),
    "attr": "|".join(COLOURS + SIZES),
    "shapes": "|".join(PLURAL.values()),
    "art": "an|a",
}
_PARSERS: List[Tuple[str, "re.Pattern[str]"]] = []
for _form, _ts in PHRASINGS.items():
    for _t in _ts:
        pat = re.escape(_t)
        for _slot, _alt in _SLOT_RE.items():
            pat = pat.replace(re.escape("{" + _slot + "}"), f"(?P<{_slot}>{_alt})")
        _PARSERS.append((_form, re.compile("^" + pat + "$")))


def parse_question(text: str) -> Optional[Tuple[str, Dict[str, str]]]:
    """(form, slots) when `text` is one of the question phrasings, else None."""
    t = text.strip()
    for form, pat in _PARSERS:
        m = pat.match(t)
        if m:
            return form, m.groupdict()
    return None


def question_validity(scene: Scene, text: str) -> Tuple[bool, Optional[str], str]:
    """(valid, form, reason). Valid: one of the forms' phrasings, and every object it refers to
    (other than the one an existence question asks about) is in the scene and unambiguous."""
    parsed = parse_question(text)
    if parsed is None:
        return False, None, "not a known question form"
    form, slots = parsed
    try:
        answer_for(scene, form, slots)
    except ValueError as e:
        return False, form, str(e)
    return True, form, "ok"


# ----------------------------------------------------------------------------- answer checking

ANSWER_KEYS = {  # every value an answer of the form can state (relation: objects, checked apart)
    "count": NUMBER_WORDS[1:5], "count_by_attribute": ["no"] + NUMBER_WORDS[1:5],
    "colour_of_shape": COLOURS, "shape_of_colour": SHAPES, "existence": ["yes", "no"],
    "position": POSITIONS, "size": SIZES, "background": BACKGROUNDS,
}


def _words(text: str) -> str:
    return " " + re.sub(r"[^a-z ]+", " ", text.lower()) + " "


def answer_correct(form: str, key: str, answer: str) -> bool:
    """Whether a free-text answer states `key` and no competing value."""
    w = _words(answer)
    if form == "relation":
        wanted = set() if key == "nothing" else set(key.split("|"))
        mentioned = set(re.findall(r" (?=((?:%s) (?:%s)) )" % ("|".join(COLOURS), "|".join(SHAPES)), w))
        # the reference object itself appears after the relation words; ignore it
        target = None
        m = re.search(r" (?:to the left of|to the right of|above|below) the ((?:%s) (?:%s)) "
                      % ("|".join(COLOURS), "|".join(SHAPES)), w)
        if m:
            target = m.group(1)
        mentioned.discard(target)
        return mentioned == wanted and (bool(wanted) or " nothing " in w)
    if form == "position":
        m = re.search(r" (?:at the|on the|in the) (top left|top right|bottom left|bottom right|top|bottom|left|right|center) ", w)
        return bool(m) and m.group(1) == key
    if form == "background":
        found = [b for b in BACKGROUNDS if f" {b} " in w]
        if "light blue" in found:
            found = [b for b in found if b != "blue"]
        return found == [key]
    keys = ANSWER_KEYS[form]
    found = [k for k in keys if f" {k} " in w]
    if form == "existence":
        return bool(found) and found[0] == key
    if form in ("count", "count_by_attribute"):
        # "There are no red shapes" / "There are two red shapes": the first number word
        return bool(found) and _first(w, found) == key
    return found == [key]


def _first(w: str, found: List[str]) -> str:
    return min(found, key=lambda k: w.find(f" {k} "))


# ----------------------------------------------------------------------------- caption checking

def caption_objects(text: str) -> List[Tuple[Optional[str], str, str]]:
    """(size|None, colour, shape) mentions in a caption."""
    w = _words(text)
    pat = r" (?:(small|big) )?(%s) (%s)(?= )" % ("|".join(COLOURS), "|".join(SHAPES))
    return [(m.group(1), m.group(2), m.group(3)) for m in re.finditer(pat, w)]


def caption_correct(scene: Scene, text: str) -> bool:
    """Every object's colour and shape named; nothing else named (sizes are not required)."""
    named = {(c, s) for _, c, s in caption_objects(text)}
    truth = {(o.colour, o.shape) for o in scene.objects}
    return named == truth


# ----------------------------------------------------------------------------- conversations

def conversation(scene: Scene, rng: random.Random, n_turns: Optional[int] = None,
                 p_describe: float = 0.5, forms: Sequence[str] = FORMS) -> List[Tuple[str, str]]:
    """(question, answer) turns. The first turn asks for the detailed description with probability
    `p_describe` (half the time, as /quiz starts); questions are distinct within a conversation
    (fewer turns where a small scene has fewer distinct questions)."""
    n = n_turns if n_turns is not None else rng.randint(2, 4)
    turns: List[Tuple[str, str]] = []
    if rng.random() < p_describe:
        turns.append((DETAILED_PROMPT, detailed_caption(scene, rng)))
    seen = set()
    for _ in range(20 * n):
        if len(turns) >= n:
            break
        q = sample_question(scene, rng, forms=forms)
        if q.text in seen:
            continue
        seen.add(q.text)
        turns.append((q.text, q.answer))
    return turns
