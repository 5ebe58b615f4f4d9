"""POST /v1/moderations through the official `openai` SDK against a real `python -m service`."""

from __future__ import annotations

import base64

import httpx
import openai
import pytest

from promptclip import Label

from .routed import domain_image, publish_router
from .serving import make_store, running_server, tiny_env

# thresholds put the random-init model's images on both sides (flagged and not)
LABELS = {
    "photo": [Label("weapon", "a photo of a weapon.", unsafe=True, threshold=0.485, openai_category="violence"),
              Label("pill", "a photo of a pill.", unsafe=True, threshold=0.9, openai_category="illicit"),
              Label("flower", "a photo of a flower.")],
    "sketch": [Label("knife", "a sketch of a knife.", unsafe=True, threshold=0.4, openai_category="violence"),
               Label("pistol", "a sketch of a pistol.", unsafe=True, threshold=0.9, openai_category="violence"),
               Label("house", "a sketch of a house.")],
}


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    store = make_store(tmp_path_factory.mktemp("moderations") / "store", tiny_model.clip, domains=LABELS)
    publish_router(store, tiny_model.clip, list(LABELS))
    with running_server(tiny_env(tiny_model, store.root)) as srv:
        yield srv


@pytest.fixture(scope="module")
def sdk(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def part(data: bytes) -> dict:
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(data).decode()}}


def test_sdk_moderates_images_as_classify_does(sdk, server):
    images = [domain_image(k, seed) for k in range(2) for seed in range(4)]
    flags = []
    for domain in LABELS:
        res = sdk.moderations.create(model=domain, input=[part(b) for b in images])
        assert res.id.startswith("modr-") and res.model == f"{domain}@v0001" and len(res.results) == len(images)
        unsafe = [lab for lab in LABELS[domain] if lab.unsafe]
        keys = {lab.name for lab in unsafe} | {lab.openai_category for lab in unsafe}
        with server.client() as http:
            for img, r in zip(images, res.results, strict=True):
                c = http.post("/classify", files={"image": ("x.png", img)}, data={"domain": domain}).json()
                assert r.flagged == c["flagged"]
                cats, scores = r.categories.to_dict(), r.category_scores.to_dict()
                assert set(cats) == set(scores) == keys
                by = {lab["label"]: lab for lab in c["labels"]}
                for lab in unsafe:
                    assert cats[lab.name] == by[lab.name]["flagged"]
                    assert scores[lab.name] == pytest.approx(by[lab.name]["probability"], abs=1e-6)
                    assert cats[lab.openai_category] == any(by[x.name]["flagged"] for x in unsafe
                                                            if x.openai_category == lab.openai_category)
                assert r.flagged == any(cats.values())
                assert r.category_applied_input_types.to_dict() == {k: ["image"] for k in keys}
                flags.append(r.flagged)
    assert any(flags) and not all(flags)  # both outcomes were compared


@pytest.mark.parametrize("model", ["auto", None])
def test_auto_or_absent_model_routes_each_image(sdk, server, model):
    kw = {"model": model} if model else {}
    res = sdk.moderations.create(input=[part(domain_image(0, 50)), part(domain_image(1, 50))], **kw)
    assert [r.domain for r in res.results] == ["photo", "sketch"] and res.model == "photo@v0001,sketch@v0001"
    assert all(r.routing["confidence"] > 0.5 for r in res.results)
    with server.client() as http:
        c = http.post("/classify", files={"image": ("x.png", domain_image(1, 50))}).json()
    assert (c["domain"], c["flagged"]) == ("sketch", res.results[1].flagged)


def test_text_urls_and_unknown_models_are_refused_with_typed_errors(sdk):
    with pytest.raises(openai.BadRequestError, match="moderates images") as e:
        sdk.moderations.create(model="photo", input="some text")
    assert e.value.status_code == 400 and e.value.code == "text_not_supported" and e.value.param == "input[0]"
    with pytest.raises(openai.BadRequestError, match="moderates images"):
        sdk.moderations.create(model="photo", input=[{"type": "text", "text": "hi"}, part(domain_image(0))])
    for url in ("https://example.com/a.png", "http://169.254.169.254/latest/meta-data"):
        with pytest.raises(openai.BadRequestError, match="SSRF") as e:
            sdk.moderations.create(model="photo", input=[{"type": "image_url", "image_url": {"url": url}}])
        assert e.value.code == "remote_url_not_allowed"
    with pytest.raises(openai.NotFoundError, match="unknown model") as e:
        sdk.moderations.create(model="medical", input=[part(domain_image(0))])
    assert e.value.code == "model_not_found" and e.value.param == "model"
    with pytest.raises(openai.BadRequestError) as e:
        sdk.moderations.create(model="photo", input=[part(b"not an image")])
    assert e.value.param == "input[0]"


def test_errors_have_openais_shape(server):
    with server.client() as http:
        for req, status in [({"model": "nope", "input": []}, 404), ({"input": "text"}, 400), ({"model": "photo"}, 400),
                            ({"model": "photo", "input": [part(domain_image(0))] * 65}, 413)]:
            r = http.post("/v1/moderations", json=req)
            assert r.status_code == status, r.text
            assert set(r.json()) == {"error"} and set(r.json()["error"]) == {"message", "type", "param", "code"}
            assert r.json()["error"]["type"] == "invalid_request_error"
        r = http.post("/v1/moderations", content=b"{", headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
        r = http.post("/v1/moderations", files={"a": ("x", b"1")})
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    with httpx.Client(base_url=server.url) as http:  # the rest of the API keeps its own envelope
        assert set(http.post("/classify", json={"domain": "photo"}).json()["error"]) == {"code", "message"}
