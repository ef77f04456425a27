"""Where models come from: the embedded tiny model or any Hugging Face causal LM path."""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
EMBEDDED_MODEL_DIR = ASSETS_DIR / "tiny"
# The harder setting: the same architecture and task, but a base that almost always skips
# the final multiplication when the factor is large (sparse reward; `remix build-tiny`).
EMBEDDED_HARD_MODEL_DIR = ASSETS_DIR / "tiny-hard"
EMBEDDED_MODELS = {
    "embedded": EMBEDDED_MODEL_DIR,
    "tiny": EMBEDDED_MODEL_DIR,
    "": EMBEDDED_MODEL_DIR,
    "embedded-hard": EMBEDDED_HARD_MODEL_DIR,
}


def resolve_model_path(name_or_path: str) -> str:
    """Map ``embedded`` (``embedded-hard``) to a shipped tiny model; check that a local path exists.

    A string that is not an existing directory and looks like a hub id
    (``org/name``) is passed through for ``from_pretrained`` to resolve.
    """
    if name_or_path in EMBEDDED_MODELS:
        shipped = EMBEDDED_MODELS[name_or_path]
        if not (shipped / "config.json").is_file():
            raise FileNotFoundError(
                f"the embedded model {name_or_path or 'embedded'!r} is missing from {shipped}; "
                f"rebuild it with `remix build-tiny --out {shipped}`"
            )
        return str(shipped)
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model path {path} has no config.json")
        return str(path)
    looks_like_hub_id = name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/"))
    if looks_like_hub_id:
        return name_or_path
    where = "" if path.is_absolute() else f" (relative to the working directory {Path.cwd()})"
    raise FileNotFoundError(f"model path {name_or_path} does not exist{where}")
