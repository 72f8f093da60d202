"""The method registry: `--method NAME` -> the class implementing it (imported lazily)."""

from __future__ import annotations

from importlib import import_module

from zstag.core.errors import UsageError

# name -> "module:Class"; modules are imported only when used, to keep start-up fast.
METHODS: dict[str, str] = {
    "lesa": "zstag.methods.lesa:LESA",
    "sgma": "zstag.methods.sgma:SGMA",
    "rgcn-posvae": "zstag.methods.rgcn.posvae:RGCNPosVAE",
    "ml2p": "zstag.methods.ml2p:ML2P",
    "fast0tag": "zstag.methods.fast0tag:Fast0Tag",
    "conse": "zstag.methods.conse:ConSE",
}
# Models assembled from trained ones, never trained themselves (`zstag ensemble`).
ASSEMBLED: dict[str, str] = {"ensemble": "zstag.methods.ensemble:Ensemble"}


def method_class(name: str):
    """The class of method `name`; a UsageError listing the choices when it is unknown."""
    target = METHODS.get(name) or ASSEMBLED.get(name)
    if target is None:
        raise UsageError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    module, cls = target.split(":")
    return getattr(import_module(module), cls)
