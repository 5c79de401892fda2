"""TextAttack's catalogue by name: find a transformation, constraint or search method, build it offline or fail fast.

A suite names components as TextAttack spells their classes (``WordSwapRandomCharacterDeletion``,
``LevenshteinEditDistance``, ``GreedyWordSwapWIR``...) with keyword arguments. Components that need data TextAttack
downloads on first use are built under :func:`.env.no_network`, so a missing file fails at once with one line that
names it (:data:`NEEDS`) instead of hanging on a download; what is already on disk loads as usual.

Importing this module imports TextAttack (offline, see :mod:`.env`).
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from harness import HarnessError, did_you_mean

from .component import Component
from .env import NetworkBlocked, import_textattack, no_network

import_textattack()

from textattack import Attack  # noqa: E402
from textattack.attack_recipes import AttackRecipe  # noqa: E402
from textattack.constraints import Constraint, PreTransformationConstraint  # noqa: E402
from textattack.search_methods import SearchMethod  # noqa: E402
from textattack.shared import AttackedText  # noqa: E402
from textattack.shared import utils as ta_utils  # noqa: E402
from textattack.transformations import (  # noqa: E402
    CompositeTransformation, Transformation, WordSwapNeighboringCharacterSwap)

#: Where each kind of component lives in TextAttack 0.3.11, and the base class its members derive from.
MODULES: dict[str, tuple[list[str], tuple[type, ...]]] = {
    "transformation": (["textattack.transformations"], (Transformation,)),
    "constraint": (["textattack.constraints.pre_transformation", "textattack.constraints.overlap",
                    "textattack.constraints.grammaticality", "textattack.constraints.grammaticality.language_models",
                    "textattack.constraints.semantics", "textattack.constraints.semantics.sentence_encoders"],
                   (Constraint, PreTransformationConstraint)),
    "search": (["textattack.search_methods"], (SearchMethod,)),
}

_EMBEDDINGS = ("TextAttack's counter-fitted word embeddings (paragramcf, in "
               f"{ta_utils.TEXTATTACK_CACHE_DIR}/word_embeddings)")
_WORDNET = "NLTK's WordNet corpora (wordnet, omw-1.4: python -m nltk.downloader wordnet omw-1.4)"
_HUB = "a model from the Hugging Face hub ({})"
#: Components known to need downloaded data, and what they need (for the error message).
NEEDS: dict[str, str] = {
    "WordSwapEmbedding": _EMBEDDINGS,
    "WordEmbeddingDistance": _EMBEDDINGS,
    "ThoughtVector": _EMBEDDINGS,
    "WordSwapWordNet": _WORDNET,
    "WordInsertionRandomSynonym": _WORDNET,
    "METEOR": _WORDNET,
    "WordSwapHowNet": "the HowNet candidate bank (TextAttack's S3)",
    "WordSwapHomoglyphSwap": "its homoglyph table shared/intentional_homoglyphs.txt (missing from the 0.3.11 wheel)",
    "WordSwapMaskedLM": _HUB.format("a masked LM, bert-base-uncased by default"),
    "WordInsertionMaskedLM": _HUB.format("a masked LM, bert-base-uncased by default"),
    "WordMergeMaskedLM": _HUB.format("a masked LM, bert-base-uncased by default"),
    "BackTranslation": _HUB.format("MarianMT translation models"),
    "BackTranscription": _HUB.format("speech synthesis and recognition models"),
    "WordSwapChangeLocation": "flair's NER tagger (downloaded from the hub)",
    "WordSwapChangeName": "flair's NER tagger (downloaded from the hub)",
    "WordSwapInflections": "flair's upos-fast part-of-speech tagger (downloaded from the hub)",
    "PartOfSpeech": "a part-of-speech tagger (NLTK's averaged_perceptron_tagger or flair's upos models)",
    "UniversalSentenceEncoder": "the Universal Sentence Encoder (TensorFlow Hub; needs tensorflow and tensorflow_hub)",
    "MultilingualUniversalSentenceEncoder": "the multilingual Universal Sentence Encoder (TensorFlow Hub)",
    "SBERT": _HUB.format("a sentence-transformers model"),
    "InferSent": "InferSent weights and GloVe vectors (TextAttack's S3)",
    "BERTScore": _HUB.format("a BERT model"),
    "COLA": _HUB.format("a CoLA classifier"),
    "GPT2": _HUB.format("gpt2"),
    "Google1BillionWordsLanguageModel": "the Google 1B-words language model (TextAttack's S3; needs tensorflow)",
    "LearningToWriteLanguageModel": "the Learning-to-Write language model (TextAttack's S3)",
    "LanguageTool": "LanguageTool (a Java server, downloaded on first use)",
}


def names(kind: str) -> list[str]:
    """Every component of ``kind`` the installed TextAttack exports."""
    modules, bases = MODULES[kind]
    found = set()
    for module_name in modules:
        module = importlib.import_module(module_name)
        for attr in dir(module):
            obj = getattr(module, attr)
            if (isinstance(obj, type) and issubclass(obj, bases) and obj not in bases and not inspect.isabstract(obj)
                    and not attr.startswith("_")):
                found.add(attr)
    return sorted(found)


def resolve(kind: str, name: str) -> type:
    """The class named ``name`` among TextAttack's components of ``kind``; ValueError with a suggestion otherwise."""
    modules, bases = MODULES[kind]
    for module_name in modules:
        obj = getattr(importlib.import_module(module_name), name, None)
        if isinstance(obj, type) and issubclass(obj, bases):
            return obj
    raise ValueError(f"unknown TextAttack {kind} '{name}'{did_you_mean(name, names(kind))}")


def resolve_recipe(name: str) -> type:
    import textattack.attack_recipes as recipes

    obj = getattr(recipes, name, None)
    if isinstance(obj, type) and issubclass(obj, AttackRecipe) and obj is not AttackRecipe:
        return obj
    known = [n for n in dir(recipes) if isinstance(getattr(recipes, n), type)
             and issubclass(getattr(recipes, n), AttackRecipe) and n != "AttackRecipe"]
    raise ValueError(f"unknown TextAttack recipe '{name}'{did_you_mean(name, known)}")


def one_line(exc: BaseException, limit: int = 200) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if any(c.isalnum() for c in line)]
    text = lines[0] if lines else ""  # NLTK's LookupError starts with a line of asterisks
    return f"{type(exc).__name__}: {text if len(text) <= limit else text[:limit] + '...'}"


class MissingDownload(OSError):
    """A file TextAttack would download (word embeddings, LMs...) is not in its cache."""


@contextmanager
def cached_downloads_only() -> Iterator[None]:
    """TextAttack's downloaders, limited to what is in its cache: the path if present, else :class:`MissingDownload`
    naming it (the real ones would leave a lock and a partial temporary file behind when the network is off)."""
    saved = ta_utils.download_from_s3, ta_utils.download_from_url

    def from_cache(name: str) -> str:
        path = ta_utils.path_in_cache(name)
        if os.path.exists(path):
            return path
        raise MissingDownload(f"'{name}' is not in TextAttack's cache ({path})")

    ta_utils.download_from_s3 = lambda folder_name, skip_if_cached=True: from_cache(folder_name)
    ta_utils.download_from_url = lambda url, save_path, skip_if_cached=True: from_cache(save_path)
    try:
        yield
    finally:
        ta_utils.download_from_s3, ta_utils.download_from_url = saved


@contextmanager
def offline_component(what: str, name: str, allow_downloads: bool) -> Iterator[None]:
    """Run the building or use of a component; a missing download becomes one HarnessError line naming the data."""
    try:
        if allow_downloads:
            yield
        else:
            with no_network(what), cached_downloads_only():
                yield
    except HarnessError:
        raise
    except (NetworkBlocked, LookupError, OSError, ImportError) as exc:
        need = NEEDS.get(name, "data it downloads on first use")
        raise HarnessError(
            f"{what} needs {need}, which is not on this machine ({one_line(exc)}); fix: fetch it where "
            "the network is reachable (or set `allow_downloads: true`), or choose an offline component such as the "
            "character-level swaps (textattack_deepwordbug)") from None


def build(kind: str, spec: Component, where: str, allow_downloads: bool) -> Any:
    """An instance of the component ``spec`` describes."""
    try:
        cls = resolve(kind, spec.name)
    except ValueError as exc:
        module = MODULES[kind][0][0] if kind != "constraint" else "textattack.constraints"
        raise HarnessError(f"{where}: {exc}; fix: use a class name from {module}") from None
    what = f"{where}: TextAttack {kind} {spec.name}"
    with offline_component(what, spec.name, allow_downloads):
        try:
            component = cls(**spec.args)
        except (TypeError, ValueError, AssertionError) as exc:
            raise HarnessError(f"{what}: bad arguments {spec.args}: {one_line(exc)}; fix: see the class's "
                               "signature in TextAttack's documentation") from None
        try:
            try_on_sample(kind, component)
        except (NetworkBlocked, LookupError, OSError, ImportError):
            raise  # a missing download: offline_component names it
        except Exception as exc:
            raise HarnessError(f"{what} fails on a sample text: {one_line(exc)}; fix: check its arguments "
                               f"{spec.args}") from None
    return component


#: A short text to try components on (many load their models or data only when first used).
SAMPLE = "The old king walked slowly into the garden."


def try_on_sample(kind: str, component: Any) -> None:
    """Use ``component`` once on :data:`SAMPLE`, so that what it loads lazily fails now, with its name attached."""
    text = AttackedText(SAMPLE)
    if kind == "transformation":
        component(text)
    elif isinstance(component, PreTransformationConstraint):
        component(text, WordSwapNeighboringCharacterSwap())
    elif kind == "constraint":
        candidates = WordSwapNeighboringCharacterSwap()(text)
        component.call_many(candidates[:1], text)


def build_transformation(specs: Component | list[Component], where: str, allow_downloads: bool) -> Transformation:
    """One transformation, or several combined into a ``CompositeTransformation`` (candidates of all of them)."""
    if isinstance(specs, Component):
        return build("transformation", specs, where, allow_downloads)
    parts = [build("transformation", s, f"{where}[{i}]", allow_downloads) for i, s in enumerate(specs)]
    return parts[0] if len(parts) == 1 else CompositeTransformation(parts)


def recipe_components(name: str, args: dict[str, Any], model_wrapper: Any, where: str,
                      allow_downloads: bool) -> tuple[Transformation, list, SearchMethod]:
    """The transformation, constraints and search method of a TextAttack recipe (its goal function is dropped)."""
    try:
        cls = resolve_recipe(name)
    except ValueError as exc:
        raise HarnessError(f"{where}: {exc}; fix: use a class name from textattack.attack_recipes") from None
    what = f"{where}: TextAttack recipe {name}"
    with offline_component(what, name, allow_downloads):
        try:
            recipe = cls.build(model_wrapper, **args)
        except (TypeError, ValueError, AssertionError) as exc:
            raise HarnessError(f"{what}: bad recipe_args {args}: {one_line(exc)}; fix: see the recipe's build()"
                               ) from None
    return (recipe.transformation, recipe.pre_transformation_constraints + recipe.constraints,
            recipe.search_method)


def assemble(goal_function: Any, transformation: Transformation, constraints: list, search: SearchMethod,
             where: str) -> Attack:
    """TextAttack's ``Attack``; an incompatible search method and transformation is the user's error, in one line."""
    try:
        return Attack(goal_function, constraints, transformation, search)
    except ValueError as exc:
        raise HarnessError(f"{where}: {str(exc).splitlines()[0]}; fix: pick a search method that accepts this "
                           "transformation (GreedyWordSwapWIR takes word swaps and deletions only; GreedySearch "
                           "and BeamSearch take any)") from None
