import pytest
import torch

from gatedattn import GatedLM, load_config


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(1)  # tiny ops: one thread avoids OpenMP overhead (and oversubscription on shared CPUs)


def tiny_model(**overrides) -> GatedLM:
    """A randomly initialised ``tiny`` model in float64 (tight comparisons); overrides are dotted keys."""
    cfg = load_config("tiny", {f"model.{k}": v for k, v in overrides.items()})
    return GatedLM(cfg.model).double().eval()
