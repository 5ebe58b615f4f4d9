"""Bundles and routers cannot fail open: a NaN or Inf anywhere is refused with the tensor's name, a
bundle's scope model must fit its base model, and old calibrated bundles say how to re-export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from promptclip import BundleError, PromptStore, load_bundle, save_bundle
from promptclip.router import load_router, save_router

STORE = Path(__file__).resolve().parents[2] / "prompts_store"


@pytest.fixture()
def bundle_path(tmp_path):
    src = PromptStore(STORE).path("photo", PromptStore(STORE).current_version("photo"))
    dst = tmp_path / "photo" / src.name
    dst.parent.mkdir()
    shutil.copy(src, dst)
    return dst


def test_the_shipped_bundle_carries_a_fitted_scope_model(bundle_path):
    b = load_bundle(bundle_path)
    scope = b.scope_model()
    assert scope is not None and scope.needs_taps and {s.source for s in scope.signals} >= {"layer1", "final"}
    assert b.manifest.decision["scope"]["cut"] is not None and b.calibration() is not None


@pytest.mark.parametrize("name", ["vision.private", "scope.layer2.basis", "scope.final.inv_sd", "labels.cache"])
def test_a_non_finite_tensor_is_refused_by_name_even_with_a_matching_checksum(bundle_path, name):
    b = load_bundle(bundle_path)
    if name not in b.tensors:
        pytest.skip(f"the shipped bundle has no {name}")
    t = b.tensors[name].clone()
    t.view(-1)[0] = float("nan") if name != "scope.final.inv_sd" else float("inf")
    b.tensors[name] = t
    save_bundle(b, bundle_path)  # a fresh sha256 over the bad bytes: the checksum passes
    with pytest.raises(BundleError) as e:
        load_bundle(bundle_path)
    assert e.value.kind == "shape" and name in str(e.value) and "NaN or Inf" in str(e.value)


def test_a_scope_model_that_does_not_fit_the_base_model_is_refused(bundle_path):
    b = load_bundle(bundle_path)
    b.tensors["scope.final.means"] = torch.zeros(1, b.tensors["scope.final.means"].shape[1] + 1)
    b.tensors["scope.final.basis"] = torch.zeros(b.tensors["scope.final.means"].shape[1],
                                                 b.tensors["scope.final.basis"].shape[1])
    save_bundle(b, bundle_path)
    with pytest.raises(BundleError, match="scope signal final has dimension"):
        load_bundle(bundle_path)
    b.manifest.decision["scope"]["model"]["signals"].append({"source": "layer9", "center": 0, "spread": 1})
    save_bundle(b, bundle_path)
    with pytest.raises(BundleError, match="scope.layer9"):  # its tensors are missing
        load_bundle(bundle_path)


def test_a_calibrated_bundle_from_before_fitted_scope_models_says_to_re_export(bundle_path):
    tensors = load_file(str(bundle_path))
    from safetensors import safe_open

    with safe_open(str(bundle_path), "pt") as f:
        manifest = json.loads(f.metadata()["bundle"])
    manifest["schema_version"] = 2
    save_file(tensors, str(bundle_path), metadata={"bundle": json.dumps(manifest)})
    with pytest.raises(BundleError, match="re-export"):
        load_bundle(bundle_path)


def test_a_non_finite_router_is_refused_by_name(tmp_path):
    router = PromptStore(STORE).load_router()
    if router is None:
        pytest.skip("no router in the shipped store")
    router.tensors["weight"] = router.tensors["weight"].clone()
    router.tensors["weight"][0, 0] = float("nan")
    path = save_router(router, tmp_path / f"{router.manifest.version}.safetensors")
    with pytest.raises(BundleError) as e:
        load_router(path)
    assert "weight" in str(e.value) and "NaN or Inf" in str(e.value)


@pytest.mark.parametrize("value", [float("nan"), -0.5, 100.0, "soft"])
def test_an_input_lowpass_outside_its_range_is_refused(bundle_path, value):
    b = load_bundle(bundle_path)
    b.manifest.prompt["input_lowpass"] = value
    save_bundle(b, bundle_path)
    with pytest.raises(BundleError) as e:
        load_bundle(bundle_path)
    assert e.value.kind == "manifest" and "input_lowpass" in str(e.value)
