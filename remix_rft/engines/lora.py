"""Optional LoRA (peft): a small trainable adapter on frozen base weights.

The reference π_base is the *same* model with the adapter switched off
(``with model.disable_adapter():``), so a LoRA run keeps one copy of the weights.
Policy reincarnation (π_base ← π_θ) merges the adapter into the base weights and
starts a fresh adapter (B = 0, so π_θ is unchanged by the restart); the trainer gives
the new phase fresh optimizer moments, as it does for full finetuning.

Checkpoints hold ``policy/`` — the merged weights as a plain Hugging Face model,
loadable by ``remix eval`` — and ``policy_lora/`` — base and adapter as they are,
which is what a resumed run continues from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

ADAPTER = "default"
STATE_DIR = "policy_lora"
STATE_FILE = "model_state.safetensors"


def require_peft() -> Any:
    try:
        import peft
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("lora_rank > 0 needs peft: pip install 'remix-rft[lora]'") from err
    return peft


def wrap(model: nn.Module, cfg: Any) -> Any:
    """The policy with a LoRA adapter of rank ``cfg.lora_rank`` on ``cfg.lora_target_modules``."""
    peft = require_peft()
    targets: Any = list(cfg.lora_target_modules) or "all-linear"
    config = peft.LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        target_modules=targets,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return peft.get_peft_model(model, config)


def is_lora(model: Any) -> bool:
    """A peft-wrapped model (without importing peft when it is not)."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


class AdapterDisabled(nn.Module):
    """π_base of a LoRA run: the policy's forward with its adapter switched off.

    Holds no parameters of its own (the policy is not registered as a submodule,
    so nothing is counted, saved or copied twice).
    """

    def __init__(self, policy: Any) -> None:
        super().__init__()
        object.__setattr__(self, "_policy", policy)

    def parameters(self, recurse: bool = True) -> Any:  # for the device look-up of the callers
        return self._policy.parameters(recurse)

    def forward(self, **kwargs: Any) -> Any:
        with self._policy.disable_adapter():
            return self._policy(**kwargs)

    def get_output_embeddings(self) -> nn.Module:
        """The policy's output head without its adapter (for the chunked log-prob path)."""
        head = self._policy.get_output_embeddings()
        get_base = getattr(head, "get_base_layer", None)  # a LoRA-wrapped head
        return get_base() if callable(get_base) else head

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return getattr(self._policy, "autocast_dtype", None)


def lora_layers(model: nn.Module) -> list[tuple[str, Any]]:
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


@torch.no_grad()
def merged_weight(layer: Any) -> torch.Tensor:
    """One LoRA module's base weight + its adapter's delta (the live weights untouched)."""
    return (layer.get_base_layer().weight + layer.get_delta_weight(ADAPTER)).detach()


@torch.no_grad()
def reincarnate(model: Any) -> None:
    """Merge the adapter into the base weights (π_base ← π_θ) and start a fresh adapter."""
    for _, layer in lora_layers(model):
        layer.merge(adapter_names=[ADAPTER])
        layer.merged_adapters = []  # the merged delta is now part of the base weights
        layer.reset_lora_parameters(ADAPTER, True)


@torch.no_grad()
def merged_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """Plain HF state dict of base + adapter (without touching the live weights)."""
    base = model.get_base_model()
    state: dict[str, torch.Tensor] = {}
    for key, value in base.state_dict().items():
        if ".lora_" in key:
            continue
        state[key.replace(".base_layer.", ".")] = value.detach().cpu()
    for name, layer in lora_layers(base):
        state[f"{name}.weight"] = merged_weight(layer).cpu()
    return state


class MergedPolicy:
    """``save_pretrained`` of a LoRA policy as a merged, loadable HF model."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer

    def save_pretrained(self, out_dir: Path) -> None:
        from remix_rft.engines.distributed import save_hf_policy

        save_hf_policy(
            self.model.get_base_model(),
            merged_state_dict(self.model),
            self.tokenizer,
            Path(out_dir),
        )


class FullState:
    """``save_pretrained`` of every weight of the peft model (base + adapter), for resuming."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def save_pretrained(self, out_dir: Path) -> None:
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_file(_untie(state), str(out / STATE_FILE))


def _untie(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses shared storage: clone tensors that alias an earlier one."""
    seen: set[int] = set()
    out = {}
    for k, v in state.items():
        ptr = v.untyped_storage().data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


def checkpoint_models(model: Any, tokenizer: Any) -> dict[str, Any]:
    return {"policy": MergedPolicy(model, tokenizer), STATE_DIR: FullState(model)}


def load_checkpoint(model: Any, checkpoint: Path) -> None:
    from safetensors.torch import load_file

    path = Path(checkpoint) / STATE_DIR / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {checkpoint} holds no LoRA state ({path}); was it a LoRA run?"
        )
    model.load_state_dict(load_file(str(path)), strict=True)
