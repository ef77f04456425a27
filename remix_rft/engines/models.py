"""Where models come from: the embedded tiny model or any Hugging Face causal LM path."""

from __future__ import annotations

from pathlib import Path

EMBEDDED_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny"
EMBEDDED_ALIASES = ("embedded", "tiny", "")


def resolve_model_path(name_or_path: str) -> str:
    """Map ``embedded`` to the shipped tiny model; check that a local path exists.

    A string that is not an existing directory and looks like a hub id
    (``org/name``) is passed through for ``from_pretrained`` to resolve.
    """
    if name_or_path in EMBEDDED_ALIASES:
        if not (EMBEDDED_MODEL_DIR / "config.json").is_file():
            raise FileNotFoundError(
                f"the embedded model is missing from {EMBEDDED_MODEL_DIR}; "
                "rebuild it with `remix build-tiny`"
            )
        return str(EMBEDDED_MODEL_DIR)
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model path {path} has no config.json")
        return str(path)
    looks_like_hub_id = name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/"))
    if looks_like_hub_id:
        return name_or_path
    raise FileNotFoundError(f"model path {name_or_path} does not exist")
