"""The frozen world (issue 11): pinned hashes of `training/synth.py` images for a few seeds.

Results are learned by changing the method, never the world. If one of these fails, synth.py's
rendering changed: revert it (new material belongs in a separate generator, e.g. training/ood.py).
The pixel hashes pin the images themselves; the PNG hashes pin the files `synth` writes with this
Pillow / zlib (a Pillow upgrade that changes only the PNG encoder fails the PNG checks alone).
"""

from __future__ import annotations

import hashlib
import io

import pytest

from training.synth import image_rng, render, write_world

# (seed, domain, label, index, sha256 of the RGB pixels, sha256 of the PNG file bytes)
PINNED = [
    (0, "photo", "knife", 0, "76c822f029b1d0ceb06c59c7872b618afca81afa2918478388055448dc29917e",
     "f7ffdf22f50f172db804cd2b9acb93a58fac78f8cdde755dab7eaaae97f2abbe"),
    (0, "painting", "pistol", 1, "a8fa1b8f9659fb19acaf88ac584c061f97bc59fb0b3e993b5213d12fb245d2fc",
     "e0059cdc2ecb25a48d537fa867de4d749e6f1512bb59d1ca88816c18e0ad9ac7"),
    (0, "sketch", "syringe", 2, "3252b83f023f3ef2a367b158fd901f6e26b31d015786e02695a7198d559cf125",
     "30d7f24e842d4600125dbee7081771be9598baaece5fa030e4f5f6c05fff90af"),
    (0, "pencil", "pill", 3, "11a0b7138c089b74d9dc313259a43b0b436e768952c1d81c002210752ebb8b37",
     "65e19df6b9fbd5f5a76fe95c51c997d0d277c5913729b4c94e1d81b0f7bd1388"),
    (0, "blueprint", "flower", 0, "1837dfcb0208c89b6ca1130af4610760968958040fe016d8dadb14884eb839b1",
     "f0b22fb3250d00ea181948dd9e7ef81e2c17f3f9d5eac01b5e551afa1d257107"),
    (0, "comic", "heart", 1, "0224c09aeef11dd4bb5f1f23b2b0bd296a0292291d721c76473d8231d70f2faa",
     "cb950858c9d959edd447220564acf89514e296e1932faac4ccbc2e5eeb80ffba"),
    (0, "poster", "house", 2, "e1b3f6c0ec00f47f5afa7da3d38fa3f48de4fdcb969b50c293570fc326ea8b79",
     "0a0ad0b0b40549dd6763a1b30b6e5bb8bd47a9bbf6188748e55c956c70caabfe"),
    (7, "photo", "knife", 0, "2b5b4c64942c63c03271e42b25537c1b1fd90a74066a9d514488b3e0dd26fe7a",
     "cb66ac4e7d43fca8ed5b1d1630443b60fba114a1f3b3ab10eb1d2371b98bf546"),
    (7, "painting", "pistol", 1, "d6f5b4920551fc810589c4c5b5248beb3da253d4d960fb11a4bdaea1f79a992f",
     "597005f44bf0ef7b00632dc40d3b463d26e8d26befc2daa2cde4a32363008396"),
    (7, "sketch", "syringe", 2, "d01bc3e583d3a6d968c9188da1171eb1dc0a76245043360445d037aecfd83747",
     "23e102807e98a76dcf0e2679cf1e0b05228b5ad44e17eb42695be33808724ad4"),
    (7, "pencil", "pill", 3, "de891738d658bf02fcf35d98e8f1a967eb693026b74195af80331cc0513e531b",
     "32f2baeeb97a7bc15ad96daf6b61e30ebad090f3f5170876c48c41b05b4882b9"),
    (7, "blueprint", "flower", 0, "0c6b8768f43f7371d051d451854717f9e0b2fd05690f92b94a4d3b010920508b",
     "6bc699d51ac23c6e458dc86c2d9c98e5c75e1e339c3297fc1c107ac134b7d23f"),
    (7, "comic", "heart", 1, "42efdc8fb8ed8edef912dd7ac41c9f1662d4442daa476a28c514c206511f757e",
     "32355cf4c5ae229d9cd2bfbb60a31b637235a457b04c5a1461756cbee85d3fb0"),
    (7, "poster", "house", 2, "caeddb0e5237013ad5f5a6d36590e2bd2d09040e729613e0747de056f99f9f14",
     "bba1cf8c584588a464caeb81381be2cec2be479b02c25dfcecf50616a335a72a"),
    (31337, "photo", "knife", 0, "e634567eb7f8f9da28194ade65c5d6bd1d8b20610241d5d4a64eca7a236e284c",
     "9c76b5d1cf1a69e18febf0becdc96e79cf707c1160e3a175cce326853d4a251e"),
    (31337, "painting", "pistol", 1, "9861366b7db9f3c8c350bc745be7886a3cb1c0d3e0e56e832775e5444b2b6eab",
     "016b881508ec1c52fa2fdc4b01a5e88df289c45045d7a262cc5884a78bc2b5e3"),
    (31337, "sketch", "syringe", 2, "df9095c641e4ac36108cea6f06f48996c20982f6a1b5ed150a4b6ffc51db9adc",
     "1f441a99894f07a9a0dde8e9150b7c1438643a74997f2c7b2931689dfa5e6739"),
    (31337, "pencil", "pill", 3, "203215ccd88fb8be917dbee72c45b096fe1a6cc935f810ac312a734ce4a78945",
     "49a522351a0564ae8ff301dcb6ef75d1ea478cc85a8e56b02b8477ecc1e77b7e"),
    (31337, "blueprint", "flower", 0, "021a7c9bd8914b91b6144ea6420a0951d4908abbe49ebeb17b8154db4e5e4ce0",
     "6cce8918354e44e4f100f4dd497995c603143a5030ad45c246f4cbab9bcff773"),
    (31337, "comic", "heart", 1, "10b59aac5743ce3740ccd3d13f58bedee2cfd93c5e5e5bdc7a31553a579ffae7",
     "09ea304057b0b0a9ba6513828f978d9807bff0d24935483701827e374dbd0eba"),
    (31337, "poster", "house", 2, "aa987b2b763b19920af0ec12c9bce23dde8054c84b423e3716a9a186ccbb3571",
     "c24b27468c5bac3bc9bdd53f45c4ebbb61d6c74b6a20fdccde2318ecda3bee9d"),
]


@pytest.mark.parametrize(("seed", "domain", "label", "index", "pixels", "png"), PINNED)
def test_images_are_pinned(seed, domain, label, index, pixels, png):
    im = render(domain, label, image_rng(seed, domain, label, index), 48)
    assert im.size == (48, 48) and im.mode == "RGB"
    assert hashlib.sha256(im.tobytes()).hexdigest() == pixels, f"synth.py changed the world: {seed} {domain}"
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False)
    assert hashlib.sha256(buf.getvalue()).hexdigest() == png


def test_written_files_are_the_pinned_bytes(tmp_path):
    write_world(tmp_path, seed=0, per_class=4)
    for seed, domain, label, index, _, png in PINNED:
        if seed == 0:
            data = (tmp_path / domain / label / f"{index:04d}.png").read_bytes()
            assert hashlib.sha256(data).hexdigest() == png, (domain, label, index)
