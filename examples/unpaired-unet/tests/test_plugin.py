"""The package's own tests: each component passes unpaired's checks (build, contract probe, two training steps).

Run them after installing the package: pip install -e . && pytest
"""

from unpaired.testing import check_component

SMALL = {"generator": {"name": "unet", "depth": 5, "ngf": 8}, "discriminator": {"name": "sn_patchgan", "ndf": 8, "n_layers": 2}}


def test_unet_generator():
    check_component("generator", "unet", {"depth": 5, "ngf": 8, "dropout": 0.5}, variant=SMALL)


def test_sn_patchgan_discriminator():
    result = check_component("discriminator", "sn_patchgan", {"ndf": 8, "n_layers": 2}, variant=SMALL)
    assert result.component.distribution == "unpaired-unet"
    assert len(result.losses) == 2
