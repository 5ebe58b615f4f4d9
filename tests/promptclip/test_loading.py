"""Model specs: offline errors are clear, specs validate, shapes are reported."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from promptclip import ClipLoadError, ModelSpec, load_clip, save_embedded_model
from promptclip.loading import _load_embedded_state

from ..conftest import TINY


def test_offline_tag_gives_one_clear_error(tmp_path):
    code = (
        "from promptclip import load_clip, ModelSpec, ClipLoadError\n"
        "try:\n"
        f"    load_clip(ModelSpec(model='ViT-B-32', pretrained='openai', cache_dir={str(tmp_path)!r}))\n"
        "except ClipLoadError as e:\n"
        "    print('CLIPLOADERROR', e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert "CLIPLOADERROR" in out.stdout, out.stderr[-2000:]
    msg = out.stdout
    assert "model='ViT-B-32'" in msg and "pretrained='openai'" in msg
    assert "local checkpoint path" in msg and "cache" in msg
    assert "Traceback" not in out.stderr


def test_unknown_tag_lists_known_ones():
    with pytest.raises(ClipLoadError, match="known tags"):
        load_clip(ModelSpec(model="ViT-B-32", pretrained="no-such-tag"))


def test_missing_checkpoint_path(tmp_path):
    with pytest.raises(ClipLoadError, match="does not exist"):
        load_clip(ModelSpec(model="ViT-B-32", pretrained=str(tmp_path / "missing.pt")))


def test_unknown_architecture():
    with pytest.raises(ClipLoadError, match="unknown open_clip architecture"):
        load_clip(ModelSpec(model="ViT-Q-99", pretrained=None))


def test_half_precision_needs_cuda():
    with pytest.raises(ValueError, match="CUDA"):
        ModelSpec(model="ViT-B-32", precision="fp16", device="cpu")


def test_info_describes_the_model(tiny_clip):
    i = tiny_clip.info
    assert (i.vision_width, i.vision_layers, i.text_width, i.text_layers, i.embed_dim) == (64, 2, 64, 3, 32)
    assert i.weights.startswith("random:")
    assert all(not p.requires_grad for p in tiny_clip.model.parameters())


def test_json_config_and_local_checkpoint(tmp_path, tiny_clip):
    """A custom architecture from a JSON config + a local safetensors checkpoint (what subprocess servers use)."""
    import json

    from safetensors.torch import save_file

    from tests.conftest import TINY

    cfg = tmp_path / "my-tiny.json"
    cfg.write_text(json.dumps(TINY))
    ckpt = tmp_path / "my-tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_clip.model.state_dict().items()}, str(ckpt))
    a = load_clip(ModelSpec(model=str(cfg), pretrained=str(ckpt)))
    b = load_clip(ModelSpec(model=str(cfg), pretrained=str(ckpt)))
    assert a.info.architecture == "my-tiny" and a.info.weights == b.info.weights
    assert a.info.weights.startswith("sha256:")


def test_embedded_save_is_byte_stable_and_round_trips(tmp_path, tiny_clip):
    """Equal weights give equal bytes (safetensors writes metadata in hash-map order), and the
    sparse token table loads back: used rows exact (fp16), unused rows zero."""
    meta = {"used_token_ids": "[0, 5, 320, 49406]", "note": "x", "zero_shot_accuracy": "{}"}
    paths = [save_embedded_model(tiny_clip.model, TINY, tmp_path / f"m{i}.safetensors", extra_metadata=meta)
             for i in range(3)]
    assert len({p.read_bytes() for p in paths}) == 1
    state = _load_embedded_state(paths[0])
    table = tiny_clip.model.token_embedding.weight.detach().half().float()
    got = state["token_embedding.weight"].float()
    assert torch.equal(got[[0, 5, 320, 49406]], table[[0, 5, 320, 49406]])
    assert got[1:5].abs().sum() == 0
    assert torch.equal(state["visual.conv1.weight"].float(), tiny_clip.model.visual.conv1.weight.detach().half().float())


def test_missing_tokenizer_directory_names_the_fix(tiny_arch, tmp_path):
    with pytest.raises(ClipLoadError, match="MODERATION_TOKENIZER=DIR .* --tokenizer DIR") as e:
        load_clip(ModelSpec(model=tiny_arch, pretrained=None, tokenizer=str(tmp_path / "nope")))
    assert "does not exist" in str(e.value) and "save_pretrained" in str(e.value)


def test_embedded_writer_is_not_on_the_serving_import_path():
    code = "import sys, promptclip, service.main; print('promptclip.embedded_writer' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


def sentencepiece_like_tokenizer(directory) -> str:
    """A tiny Hugging Face fast tokenizer shaped like SigLIP's: no SOT, EOS appended, pad = EOS = 1."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["<pad0>", "</s>", "<unk>", "a", "photo", "of", "knife", "flower", "x"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="</s>", unk_token="<unk>"
                            ).save_pretrained(str(directory))
    return str(directory)


def test_local_tokenizer_directory_serves_siglip_style_tokens(tmp_path, tiny_arch):
    """Offline: the tokenizer comes from a local directory; its padding is not 0, and label
    prompts still get their placeholder slots and encode."""
    from promptclip import PromptedCLIP, label_tokens

    tok_dir = sentencepiece_like_tokenizer(tmp_path / "tok")
    clip = load_clip(ModelSpec(model=tiny_arch, pretrained=None, tokenizer=tok_dir))
    ids = clip.tokenizer(["a photo of a knife"])
    assert ids.shape == (1, 77) and ids[0, :6].tolist() == [3, 4, 5, 3, 6, 1] and int(ids[0, -1]) == 1
    tokens = label_tokens(clip.tokenizer, ["a photo of a knife", "a flower"], 2)
    assert tokens[0, :8].tolist() == [3, 1, 1, 4, 5, 3, 6, 1]  # 2 slots after the first position
    enc = PromptedCLIP(clip.model)
    feats = enc.encode_text(tokens, torch.randn(2, enc.text_layers, 2, enc.text_width))
    assert feats.shape == (2, clip.info.embed_dim) and torch.isfinite(feats).all()
