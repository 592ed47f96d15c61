"""What a model from the zoo layer offers its users (timm / Hugging Face conventions), on top of ``LayerCascade``.

``create_model``, ``from_pretrained`` and the models of ``@register_cascade`` return models that
carry ``PretrainedMixin``: ``model.pretrained_cfg`` (``PretrainedCfg``), ``model.preprocess(images)``,
``model.segment(images)``, ``model.save_pretrained(folder)`` and ``model.push_to_hub(repo_id)``, each a
call of the free function of :mod:`sparsecascade.segment` / :mod:`sparsecascade.save`. ``LayerCascade``
itself (the cascade layer) knows none of this and imports nothing above it; a ``LayerCascade`` built by
hand uses the free functions (``sparsecascade.save_pretrained(model, folder)``,
``sparsecascade.segment.segment(model, images)``).

How a model gets the mixin: ``with_pretrained_api(model)`` turns the model's class into a subclass of
it and of the mixin (``LayerCascade`` -> ``PretrainedLayerCascade``; a custom subclass gets its own,
made once and cached), in place, as ``torch.nn.utils.parametrize`` does. The model stays an instance of
its own class (``isinstance(model, LayerCascade)``), its modules, parameters and state dict are the
same, and it pickles and deep-copies as the subclass. One function serves every path, including the
models that registered builders construct themselves, which no class argument could reach.
"""
from __future__ import annotations

from collections.abc import MutableMapping
from typing import Optional

from .cascade import LayerCascade
from .rho import Rho
from .save import push_to_hub, save_pretrained
from .segment import DEFAULT_BATCH_SIZE, preprocess, segment
from .zoo import ZOO

__all__ = ["PretrainedCfg", "PretrainedMixin", "PretrainedLayerCascade", "with_pretrained_api",
           "PRETRAINED_CFG_KEYS", "INTERPOLATION"]

# -- pretrained_cfg: what a user needs to feed the model and to read its output ------------------------
PRETRAINED_CFG_KEYS = ("name", "architecture", "dataset", "license", "num_classes", "class_names", "palette",
                       "mean", "std", "shortest_edge", "longest_edge")
INTERPOLATION = "bilinear"  # how segment() resizes an image to shortest_edge and the logits back


class PretrainedCfg(MutableMapping):
    """``model.pretrained_cfg``, as timm names it: the model's input normalization and scale and its classes.

    A live view of ``model.config`` (what ``save_pretrained`` writes to ``config.json``), not a copy:
    reading a key reads ``model.config``, setting one (``model.pretrained_cfg["shortest_edge"] = 360``)
    sets it there, so ``segment`` / ``preprocess`` and the next ``save_pretrained`` follow it. Every key of
    ``PRETRAINED_CFG_KEYS`` is always present (None where the config does not record it: no
    ``shortest_edge`` means images run at their own size), plus ``interpolation`` and ``hf_hub_id`` (the Hub
    repository the weights came from, or the zoo model's), which are read-only. ``dict(model.pretrained_cfg)``
    is a plain copy.
    """

    READ_ONLY = ("interpolation", "hf_hub_id")

    def __init__(self, config: dict, hf_hub_id: Optional[str] = None):
        if not isinstance(config, dict):
            raise TypeError(f"config: expected the model's config dict, got {type(config).__name__}")
        self._config = config
        self._hf_hub_id = hf_hub_id

    def __getitem__(self, key: str):
        if key == "interpolation":
            return INTERPOLATION
        if key == "hf_hub_id":
            if self._hf_hub_id is not None:
                return self._hf_hub_id
            entry = ZOO.get(self._config.get("name"))
            return entry.repo_id if entry is not None else None
        if key not in PRETRAINED_CFG_KEYS:
            raise KeyError(key)
        value = self._config.get(key)
        return tuple(value) if key in ("mean", "std") and value is not None else value

    def __setitem__(self, key: str, value) -> None:
        if key in self.READ_ONLY:
            raise ValueError(f"pretrained_cfg: {key!r} is read-only")
        if key not in PRETRAINED_CFG_KEYS:
            raise KeyError(f"pretrained_cfg: unknown key {key!r}; expected one of {PRETRAINED_CFG_KEYS}")
        self._config[key] = _checked_cfg_value(key, value)

    def __delitem__(self, key: str) -> None:
        raise TypeError(f"pretrained_cfg: its keys are fixed; set {key!r} to None instead")

    def __iter__(self):
        return iter(PRETRAINED_CFG_KEYS + self.READ_ONLY)

    def __len__(self) -> int:
        return len(PRETRAINED_CFG_KEYS) + len(self.READ_ONLY)

    def __repr__(self) -> str:
        return f"PretrainedCfg({dict(self)!r})"


def _checked_cfg_value(key: str, value):
    """A pretrained_cfg value as config.json records it (lists, ints), or a one-line error naming the key."""
    if value is None:
        return None
    if key in ("mean", "std"):
        try:
            values = [float(v) for v in value]
        except (TypeError, ValueError):
            values = []
        if len(values) != 3 or (key == "std" and min(values) <= 0):
            raise ValueError(f"pretrained_cfg[{key!r}]: expected 3 numbers (R, G, B){', each > 0' if key == 'std' else ''}, "
                             f"got {value!r}")
        return values
    if key in ("shortest_edge", "longest_edge", "num_classes"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"pretrained_cfg[{key!r}]: expected a positive int or None, got {value!r}")
        return value
    if key == "class_names":
        return [str(v) for v in value]
    if key == "palette":
        return [list(map(int, c)) for c in value]
    return str(value)


# -- the methods users call on a model -----------------------------------------------------------------
class PretrainedMixin:
    """``save_pretrained``, ``push_to_hub``, ``segment`` and ``preprocess`` as methods, and ``pretrained_cfg``
    (set by ``with_pretrained_api``); each method calls the free function of the same name with the model."""

    pretrained_cfg: PretrainedCfg

    def save_pretrained(self, folder, **kwargs):
        """Write config.json, model.safetensors and a model card to ``folder`` (``sparsecascade.save.save_pretrained``)."""
        return save_pretrained(self, folder, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs):
        """Upload what ``save_pretrained`` writes to the Hugging Face Hub repository ``repo_id``
        (``sparsecascade.save.push_to_hub``: ``revision``, ``create_pr``, ``commit_message``, ``private``, ...)."""
        return push_to_hub(self, repo_id, **kwargs)

    def segment(self, images, rho: Optional[Rho] = None, *, batch_size: int = DEFAULT_BATCH_SIZE):
        """Segment one image (path, PIL image or (H, W, 3) uint8 array) -> a ``Segmentation``, or a list
        of them -> a list (images of one size run as one batch): ``sparsecascade.segment.segment``."""
        return segment(self, images, rho, batch_size=batch_size)

    def preprocess(self, images, device=None):
        """One image or a list of images of one size -> the (N, 3, h, w) batch ``model(x)`` takes, normalized
        and scaled as ``pretrained_cfg`` says (``sparsecascade.segment.preprocess``)."""
        return preprocess(self, images, device)

    def __reduce_ex__(self, protocol):
        # pickle / deepcopy: rebuild the subclass from the model's own class (a made subclass has no importable name)
        reduced = super().__reduce_ex__(protocol)
        return (_new_with_pretrained_api, (self._pretrained_base,)) + tuple(reduced[2:])


class PretrainedLayerCascade(PretrainedMixin, LayerCascade):
    """A ``LayerCascade`` with the methods of ``PretrainedMixin`` (what ``with_pretrained_api`` makes of one)."""

    _pretrained_base = LayerCascade


_WITH_API: dict[type, type] = {LayerCascade: PretrainedLayerCascade}


def _class_with_api(base: type) -> type:
    """``base`` with ``PretrainedMixin`` first in its bases: made once per class."""
    if base not in _WITH_API:
        _WITH_API[base] = type(f"Pretrained{base.__name__}", (PretrainedMixin, base),
                               {"__module__": __name__, "_pretrained_base": base,
                                "__doc__": f"A ``{base.__qualname__}`` with the methods of ``PretrainedMixin``."})
    return _WITH_API[base]


def _new_with_pretrained_api(base: type):
    """An empty instance of ``base`` with the mixin, which unpickling then fills (``copyreg.__newobj__``)."""
    cls = _class_with_api(base)
    return cls.__new__(cls)


def with_pretrained_api(model: LayerCascade, hf_hub_id: Optional[str] = None) -> LayerCascade:
    """Give ``model`` (in place) the methods of ``PretrainedMixin`` and ``model.pretrained_cfg``, the view of
    ``model.config`` (``hf_hub_id``: the Hub repository its weights came from). Applying it again only
    renews ``pretrained_cfg``. Called by ``create_model`` and ``from_pretrained`` on every model they return."""
    if not isinstance(model, LayerCascade):
        raise TypeError(f"model: expected a LayerCascade, got {type(model).__name__}")
    if not isinstance(model, PretrainedMixin):
        model.__class__ = _class_with_api(type(model))
    model.pretrained_cfg = PretrainedCfg(model.config, hf_hub_id)
    return model
