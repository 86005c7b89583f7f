"""Captions written from a scene's parameters, and the parser that reads them back.

Every slot of a caption (colour, shape, verb, direction, background...) has training wordings and,
for many slots, held-out wordings ("crimson" for red, "travels" for moves). Training captions use
only training wordings; held-out captions use at least one held-out wording, so an evaluation can
ask whether the text encoder carries a model to words it never saw with these clips.

`parse_prompt` reads any caption in this vocabulary (training or held-out wording) into a
`PromptSpec`, the thing a generated clip is judged against.
"""

from __future__ import annotations

import re

import numpy as np

from pipelines.toyworld.photos import PHOTOS
from pipelines.toyworld.scenes import ObjectSpec, PromptSpec, Scene, Shape

# slot -> (training wordings, held-out wordings). The plain word comes first: where a slot has many
# wordings, a caption takes it outright PLAIN_SHARE of the time and draws uniformly otherwise, so the plain
# words stay common while the synonyms teach the model that the encoder's sense of a word matters, not
# its spelling.
PLAIN_SHARE = 0.4
PLAIN_AMONG = 3  # slots with more training wordings than this favour the first
COLOUR_WORDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "red": (("red", "scarlet", "ruby", "cherry", "vermilion", "carmine", "cardinal", "tomato"), ("crimson",)),
    "orange": (("orange", "amber", "apricot", "pumpkin", "carrot", "mandarin"), ("tangerine",)),
    "yellow": (("yellow", "lemon", "canary", "saffron", "sunflower", "banana", "mustard"), ("golden",)),
    "green": (("green", "jade", "lime", "mint", "shamrock", "clover"), ("emerald",)),
    "cyan": (("cyan", "aqua", "teal", "aquamarine", "seafoam"), ("turquoise",)),
    "blue": (("blue", "cobalt", "sapphire", "navy", "cerulean", "ultramarine"), ("azure",)),
    "purple": (("purple", "lilac", "lavender", "plum", "amethyst", "orchid", "grape", "mauve"), ("violet",)),
    "pink": (("pink", "rose", "fuchsia", "magenta", "bubblegum", "flamingo", "blush"), ()),
    "white": (("white", "snowy", "cream", "pearl", "milky", "chalk", "alabaster", "porcelain"), ("ivory",)),
}
SHAPE_WORDS = {
    "circle": (("circle", "ball", "dot", "orb", "sphere", "bead"), ("disc", "disk")),
    "square": (("square", "box", "cube", "tile"), ("block",)),
    "triangle": (("triangle", "wedge", "pyramid"), ()),
    "diamond": (("diamond", "rhombus"), ("lozenge",)),
}
SIZE_WORDS = {"small": (("small", "little", "tiny"), ()), "large": (("large", "big"), ())}
MOVE_VERBS = (("moves", "slides", "drifts", "goes", "shifts", "floats", "rolls", "runs", "flies", "sails", "cruises",
               "darts"), ("travels", "glides", "heads"))
UP_VERBS = (("rises", "climbs", "soars"), ("ascends",))  # verbs that carry their own direction
DOWN_VERBS = (("falls", "sinks", "drops", "plunges", "tumbles"), ("descends",))
DIRECTION_PHRASES = {
    "right": (("to the right", "right", "rightward", "towards the right"), ()),
    "left": (("to the left", "left", "leftward", "towards the left"), ()),
    "up": (("up", "upward", "upwards", "towards the top"), ()),
    "down": (("down", "downward", "downwards", "towards the bottom"), ()),
}
STILL_PHRASES = (("sits still", "stays still", "stays in place", "does not move", "stays put", "holds still",
                  "is stationary", "rests in place"), ("remains motionless",))
GROW_PHRASES = (("grows", "gets bigger", "expands", "grows larger", "enlarges", "inflates", "gets larger"), ("swells",))
SHRINK_PHRASES = (("shrinks", "gets smaller", "contracts", "deflates", "diminishes"), ("dwindles",))
GROW_SUFFIXES = ((" while growing", " and grows", " and gets bigger", " while getting bigger", " while expanding",
                  " while inflating", " and enlarges"), (" while swelling",))
SHRINK_SUFFIXES = ((" while shrinking", " and shrinks", " and gets smaller", " while contracting", " while deflating",
                    " and diminishes"), (" while dwindling",))
BOUNCE_VERBS = (("bounces", "rebounds"), ("ricochets",))
BOUNCE_TAILS = {
    "bounce-horizontal": ("left and right", "back and forth", "from side to side"),
    "bounce-vertical": ("up and down",),
    "bounce-diagonal": ("off the walls", "around", "around the frame"),
}
BACKGROUND_WORDS = {
    "black": (("black",), ()), "white": (("white",), ()), "gray": (("gray", "grey"), ()),
    "noise": (("noisy", "mottled", "textured"), ("speckled",)), "stripes": (("striped",), ("banded",)),
    "checker": (("checkered", "checkerboard"), ()), "gradient": (("gradient", "shaded"), ()),
}
BACKGROUND_NOUNS = (("background", "canvas", "field"), ("backdrop",))
PREPOSITIONS = ("on", "against", "over")
PHOTO_NOUNS = (("photo", "picture", "photograph"), ("image",))
PAN_WORDS = {"pan-left": ("left", "to the left"), "pan-right": ("right", "to the right"),
             "pan-up": ("up", "upward"), "pan-down": ("down", "downward")}
PAN_TEMPLATES = (
    ("the camera pans {d} across a {n} of {s}", "the camera pans {d} over a {n} of {s}",
     "a {n} of {s}, the camera pans {d}", "panning {d} across a {n} of {s}", "a slow pan {d} across a {n} of {s}",
     "the camera pans {d}"),
    ("the camera sweeps {d} across an {n} of {s}", "the camera sweeps {d}"),
)
ZOOM_TEMPLATES = {
    "zoom-in": (("the camera zooms in on a {n} of {s}", "zooming in on a {n} of {s}",
                 "a slow zoom in on a {n} of {s}", "the camera zooms in"),
                ("the camera pushes in on an {n} of {s}", "the camera pushes in")),
    "zoom-out": (("the camera zooms out from a {n} of {s}", "zooming out from a {n} of {s}",
                  "a slow zoom out from a {n} of {s}", "the camera zooms out"),
                 ("the camera pulls back from an {n} of {s}", "the camera pulls back")),
}


def _words_of(table) -> set[str]:
    words: set[str] = set()
    for options in table:
        for phrase in options:
            words.update(re.findall(r"[a-z]+", phrase.replace("{d}", "").replace("{n}", "").replace("{s}", "")))
    return words


def _vocabulary(which: int) -> set[str]:
    tables = [*COLOUR_WORDS.values(), *SHAPE_WORDS.values(), *SIZE_WORDS.values(), MOVE_VERBS, UP_VERBS,
              DOWN_VERBS, *DIRECTION_PHRASES.values(), STILL_PHRASES, GROW_PHRASES, SHRINK_PHRASES,
              GROW_SUFFIXES, SHRINK_SUFFIXES, BOUNCE_VERBS, *BACKGROUND_WORDS.values(), BACKGROUND_NOUNS,
              PHOTO_NOUNS, PAN_TEMPLATES, *ZOOM_TEMPLATES.values()]
    words = _words_of(t[which] for t in tables)
    if which == 0:
        words |= _words_of([tails for tails in BOUNCE_TAILS.values()])
        words |= set(PREPOSITIONS) | {"a", "an", "and", "of", "as", "it", "diagonally", "upper", "lower"}
    return words


TRAIN_WORDS = frozenset(_vocabulary(0))
HELDOUT_WORDS = frozenset(_vocabulary(1) - TRAIN_WORDS)


# ---------------------------------------------------------------------------------------------
# writing


class _Writer:
    """Picks wordings; in held-out mode it prefers held-out wordings and records whether it used one."""

    def __init__(self, rng: np.random.Generator, heldout: bool):
        self.rng, self.heldout, self.used_heldout = rng, heldout, False

    def pick(self, options: tuple[tuple[str, ...], tuple[str, ...]], p_heldout: float = 0.6) -> str:
        train, held = options
        if self.heldout and held and self.rng.uniform() < p_heldout:
            self.used_heldout = True
            return held[int(self.rng.integers(len(held)))]
        if len(train) > PLAIN_AMONG and self.rng.uniform() < PLAIN_SHARE:
            return train[0]
        return train[int(self.rng.integers(len(train)))]

    def one(self, options) -> str:
        return options[int(self.rng.integers(len(options)))]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _object_phrase(w: _Writer, shape: Shape) -> str:
    words = []
    if shape.change == "none" and w.rng.uniform() < 0.5:
        if shape.size <= 0.11:
            words.append(w.pick(SIZE_WORDS["small"]))
        elif shape.size >= 0.17:
            words.append(w.pick(SIZE_WORDS["large"]))
    words.append(w.pick(COLOUR_WORDS[shape.colour]))
    words.append(w.pick(SHAPE_WORDS[shape.kind], 0.4))
    return f"{_article(words[0])} {' '.join(words)}"


def _direction_phrase(w: _Writer, motion: str) -> str:
    if "-" not in motion:
        return w.pick(DIRECTION_PHRASES[motion])
    vertical, horizontal = motion.split("-")
    top = "top" if vertical == "up" else "bottom"
    upper = "upper" if vertical == "up" else "lower"
    return w.one((f"{vertical} and to the {horizontal}", f"diagonally {vertical} and to the {horizontal}",
                  f"towards the {top} {horizontal}", f"to the {upper} {horizontal}"))


def _predicate(w: _Writer, shape: Shape) -> str:
    motion, change = shape.motion, shape.change
    if motion.startswith("bounce"):
        return f"{w.pick(BOUNCE_VERBS, 0.5)} {w.one(BOUNCE_TAILS[motion])}"
    if motion == "still":
        return w.pick({"none": STILL_PHRASES, "grow": GROW_PHRASES, "shrink": SHRINK_PHRASES}[change], 0.5)
    own_verbs = {"up": UP_VERBS, "down": DOWN_VERBS}.get(motion)
    if own_verbs is not None and w.rng.uniform() < 0.3:
        going = w.pick(own_verbs, 0.5)
    else:
        going = f"{w.pick(MOVE_VERBS)} {_direction_phrase(w, motion)}"
    if change == "none":
        return going
    if w.rng.uniform() < 0.3:
        return f"{'grows' if change == 'grow' else 'shrinks'} as it {going}"
    return going + w.pick(GROW_SUFFIXES if change == "grow" else SHRINK_SUFFIXES, 0.5)


def _background_phrase(w: _Writer, name: str, force_heldout: bool = False) -> str:
    adjective = w.pick(BACKGROUND_WORDS[name])
    noun = w.pick(BACKGROUND_NOUNS, 1.0 if force_heldout else 0.3)
    return f"{w.one(PREPOSITIONS)} {_article(adjective)} {adjective} {noun}"


def _shapes_caption(w: _Writer, scene: Scene, force_heldout: bool) -> str:
    clauses = [f"{_object_phrase(w, s)} {_predicate(w, s)}" for s in scene.shapes]
    body = clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + " and " + clauses[-1]
    if not force_heldout and not w.heldout and w.rng.uniform() < 0.15:
        return body
    background = _background_phrase(w, scene.background.name, force_heldout)
    if w.rng.uniform() < 0.25:
        return f"{background}, {body}"
    return f"{body} {background}"


def _camera_caption(w: _Writer, scene: Scene) -> str:
    camera = scene.camera
    subject = PHOTOS[camera.photo].subject
    noun = w.pick(PHOTO_NOUNS, 1.0)
    if camera.move in PAN_WORDS:
        template = w.pick(PAN_TEMPLATES, 1.0)
        return template.format(d=w.one(PAN_WORDS[camera.move]), n=noun, s=subject)
    return w.pick(ZOOM_TEMPLATES[camera.move], 1.0).format(n=noun, s=subject)


def write_caption(scene: Scene, rng: np.random.Generator | None = None, *, heldout_wording: bool = False) -> str:
    """A caption for the scene. Training wording by default; with `heldout_wording`, at least one
    word from HELDOUT_WORDS and otherwise any wording. Deterministic given the generator (default:
    one seeded by the scene's own seed)."""
    rng = np.random.default_rng([scene.seed, int(heldout_wording)]) if rng is None else rng
    w = _Writer(rng, heldout_wording)
    if scene.camera is not None:
        return _camera_caption(w, scene)
    text = _shapes_caption(w, scene, False)
    if heldout_wording and not w.used_heldout:  # e.g. a pink triangle: say "backdrop"
        w = _Writer(rng, True)
        text = _shapes_caption(w, scene, True)
    return text


# ---------------------------------------------------------------------------------------------
# reading


def _lookup(table: dict) -> dict[str, str]:
    return {word: key for key, (train, held) in table.items() for word in (*train, *held)}


_COLOUR_OF = _lookup(COLOUR_WORDS)
_SHAPE_OF = _lookup(SHAPE_WORDS)
_BACKGROUND_OF = {**_lookup(BACKGROUND_WORDS), "textured": "textured"}


def _alternation(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_SIZE_RE = _alternation(w for train, held in SIZE_WORDS.values() for w in (*train, *held))
_OBJECT_RE = re.compile(rf"\b(?:(?:{_SIZE_RE})\s+)?({_alternation(_COLOUR_OF)})\s+({_alternation(_SHAPE_OF)})\b")
_BACKGROUND_RE = re.compile(rf"\b(?:{'|'.join(PREPOSITIONS)})\s+(?:a|an|the)\s+({_alternation(_BACKGROUND_OF)})\s+"
                            rf"(?:{_alternation(w for nouns in BACKGROUND_NOUNS for w in nouns)})\b")
_CAMERA_RE = re.compile(r"\b(?:camera|pan|pans|panning|zoom|zooms|zooming|sweeps|sweeping|pushes|pulls)\b")
_ZOOM_IN_RE = re.compile(r"\b(?:zoom|zooms|zooming)\s+in\b|\bpush(?:es|ing)?\s+in\b")
_ZOOM_OUT_RE = re.compile(r"\b(?:zoom|zooms|zooming)\s+out\b|\bpull(?:s|ing)?\s+(?:back|out)\b")
_PAN_RE = re.compile(r"\b(?:pan|pans|panning|sweeps|sweeping)\s+(?:to the\s+)?(left|right|up|down)")
_SUBJECT_RE = re.compile(r"\b(?:photo|picture|photograph|image)\s+of\s+(.+?)\s*(?:,|$)")
_RIGHT_RE = re.compile(r"\b(?:right|rightward|rightwards)\b")
_LEFT_RE = re.compile(r"\b(?:left|leftward|leftwards)\b")
_UP_RE = re.compile(r"\b(?:up|upward|upwards|top|upper|rises|rising|climbs|climbing|soars|soaring|ascends|"
                    r"ascending)\b")
_DOWN_RE = re.compile(r"\b(?:down|downward|downwards|bottom|lower|falls|falling|sinks|sinking|drops|dropping|"
                      r"plunges|plunging|tumbles|tumbling|descends|descending)\b")
_GROW_RE = re.compile(r"\b(?:grow|grows|growing|bigger|larger|expand|expands|expanding|enlarge|enlarges|enlarging|"
                      r"inflate|inflates|inflating|swell|swells|swelling)\b")
_SHRINK_RE = re.compile(r"\b(?:shrink|shrinks|shrinking|smaller|contract|contracts|contracting|deflate|deflates|"
                        r"deflating|diminish|diminishes|diminishing|dwindle|dwindles|dwindling)\b")
_BOUNCE_RE = re.compile(r"\b(?:bounce|bounces|bouncing|rebound|rebounds|rebounding|ricochet|ricochets|"
                        r"ricocheting)\b")


def _parse_motion(clause: str) -> tuple[str, str]:
    change = "grow" if _GROW_RE.search(clause) else "shrink" if _SHRINK_RE.search(clause) else "none"
    if _BOUNCE_RE.search(clause):
        if re.search(r"left and right|back and forth|side to side|sideways", clause):
            return "bounce-horizontal", change
        if re.search(r"up and down", clause):
            return "bounce-vertical", change
        return "bounce-diagonal", change
    horizontal = "right" if _RIGHT_RE.search(clause) else "left" if _LEFT_RE.search(clause) else None
    vertical = "up" if _UP_RE.search(clause) else "down" if _DOWN_RE.search(clause) else None
    if horizontal and vertical:
        return f"{vertical}-{horizontal}", change
    return horizontal or vertical or "still", change


def parse_prompt(text: str) -> PromptSpec:
    """Read a caption of this vocabulary into what it asks for. Raises ValueError for a prompt that
    names neither a coloured shape nor a camera move (the analyser would have nothing to check)."""
    lower = " ".join(text.lower().replace(".", " ").split())
    background = None
    match = _BACKGROUND_RE.search(lower)
    if match:
        background = _BACKGROUND_OF[match.group(1)]
        lower = (lower[:match.start()] + " " + lower[match.end():]).strip(" ,")
    mentions = list(_OBJECT_RE.finditer(lower))
    if mentions:
        objects = []
        for i, m in enumerate(mentions):
            end = mentions[i + 1].start() if i + 1 < len(mentions) else len(lower)
            motion, change = _parse_motion(lower[m.end():end])
            objects.append(ObjectSpec(_COLOUR_OF[m.group(1)], _SHAPE_OF[m.group(2)], motion, change))
        return PromptSpec(objects=tuple(objects), background=background)
    if _CAMERA_RE.search(lower):
        subject_match = _SUBJECT_RE.search(lower)
        subject = subject_match.group(1) if subject_match else None
        if _ZOOM_IN_RE.search(lower):
            return PromptSpec(camera="zoom-in", photo=subject)
        if _ZOOM_OUT_RE.search(lower):
            return PromptSpec(camera="zoom-out", photo=subject)
        pan = _PAN_RE.search(lower)
        if pan:
            return PromptSpec(camera=f"pan-{pan.group(1)}", photo=subject)
    raise ValueError(f"cannot read {text!r}: name a coloured shape ('a red circle moves to the right') "
                     "or a camera move ('the camera pans left')")
