"""unpaired.testing.check_component, the one call a plugin's own test suite makes, catches what runs cannot."""

from __future__ import annotations

import pytest

from conftest import BROKEN_COMPONENTS
from unpaired.testing import ContractError, check_component

SMALL = {"generator": {"name": "resnet", "n_blocks": 1, "ngf": 4}, "discriminator": {"name": "patchgan", "ndf": 4, "n_layers": 2}}

MISBEHAVING = """
    import torch
    from PIL import Image
    from pydantic import BaseModel
    from torch import nn
    from unpaired.plugin_api import ImagePool, Transform, UnpairedData, hookimpl

    class P(BaseModel):
        pass

    class Frozen(nn.Module):
        '''Right shape and range, but its output ignores its weights: nothing trains it.'''

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return torch.tanh(x + 0 * self.conv(x))

    class GlobalRandomPool(ImagePool):
        '''Draws from the global RNG and forgets its draws in state_dict: a resumed run would differ.'''

        def __init__(self, params, seed):
            self.stored = []

        def query(self, images):
            self.stored += list(images)
            picks = torch.randint(0, len(self.stored), (len(images),))
            return torch.stack([self.stored[int(i)] for i in picks])

        def state_dict(self):
            return {"stored": list(self.stored)}

        def load_state_dict(self, state):
            self.stored = list(state["stored"])

    class NoTestB(UnpairedData):
        def __init__(self, params):
            super().__init__(Transform(load_size=None, crop_size=32, crop=False, flip=False))

        def size(self, split, domain):
            return 0 if (split, domain) == ("test", "B") else 2

        def image(self, split, domain, index):
            return Image.new("RGB", (32, 32), (index * 50, 0, 0))

    class BatchCentred(nn.Module):
        '''Features relative to the batch mean: an image's features depend on its batch.'''

        def forward(self, images):
            features = images.float().mean(dim=(2, 3))
            return features - features.mean(0)

    class MisnamedWeights(nn.Module):
        '''Says one weights file unbuilt and another built: scores would be read as another evaluation's.'''

        cache_identity = "weights-b.pth"

        def __init__(self, params):
            super().__init__()

        @staticmethod
        def cache_identity_of(params):
            return "weights-a.pth"

        def forward(self, images):
            return images.float().mean(dim=(2, 3))

    @hookimpl
    def unpaired_register_generators(register):
        register("frozen", lambda params, norm: Frozen(), P, "ignores its weights")

    @hookimpl
    def unpaired_register_image_pools(register):
        register("global_random", GlobalRandomPool, P, "global RNG, not resumable")

    @hookimpl
    def unpaired_register_datasets(register):
        register("no_test_b", NoTestB, P, "no test images of B")

    @hookimpl
    def unpaired_register_feature_extractors(register):
        register("batch_centred", lambda params: BatchCentred(), P, "batch-dependent features")
        register("misnamed_weights", MisnamedWeights, P, "an identity that differs built and unbuilt")
"""


@pytest.fixture
def misbehaving(make_distribution):
    make_distribution("odd-parts", "0.3", {"odd": "odd_parts"}, {"odd_parts.py": MISBEHAVING})


@pytest.mark.parametrize(
    ("kind", "name", "message"),
    [
        ("generator", "frozen", "training with generator 'frozen' of odd-parts 0.3 changed none of G_AB's parameters"),
        (
            "image_pool",
            "global_random",
            "image_pool 'global_random' of odd-parts 0.3: a pool restored with load_state_dict(state_dict()) must continue exactly",
        ),
        ("dataset", "no_test_b", "dataset 'no_test_b' of odd-parts 0.3 must hold images in every split and domain; testB"),
        (
            "feature_extractor",
            "batch_centred",
            "feature_extractor 'batch_centred' of odd-parts 0.3 must give an image the same features alone as in a batch",
        ),
        (
            "feature_extractor",
            "misnamed_weights",
            "feature_extractor 'misnamed_weights' of odd-parts 0.3's cache_identity_of(params) says 'weights-a.pth', but the built",
        ),
    ],
)
def test_a_component_that_would_give_silently_wrong_results_fails_its_check(misbehaving, kind, name, message):
    with pytest.raises(ContractError) as error:
        check_component(kind, name, variant=SMALL)
    assert str(error.value).startswith(message), str(error.value)


def test_the_contract_probe_is_part_of_the_check(make_distribution):
    make_distribution("broken-parts", "1.0", {"broken": "broken_parts"}, {"broken_parts.py": BROKEN_COMPONENTS})
    with pytest.raises(ContractError, match=r"norm 'coupled' of broken-parts 1.0 claims per_image = True"):
        check_component("norm", "coupled", variant=SMALL)


def test_a_sound_component_passes_with_two_finite_training_steps_and_leaves_the_global_rng_alone(site):
    import torch

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    result = check_component("gan_loss", "wgangp", variant=SMALL)
    assert torch.equal(torch.rand(3), expected)
    assert result.component.name == "wgangp" and len(result.losses) == 2
    assert all(step["D_reg_A"] > 0 and all(abs(v) < 1e6 for v in step.values()) for step in result.losses)
    assert check_component("image_pool", "history", {"size": 3}, variant=SMALL).component.distribution == "unpaired"
