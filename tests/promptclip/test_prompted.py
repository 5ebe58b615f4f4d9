"""Invariants of the prompted model (DESIGN §3)."""

from __future__ import annotations

import torch

from promptclip import MultiTaskCLIP, PromptConfig, PromptedCLIP, TaskPrompts

TASKS = ["photo", "sketch", "comic"]
GROUPS = [["photo", "comic"], ["sketch"]]
LABELS = {
    "photo": ["a photo of a knife.", "a photo of a flower.", "a photo of a pill."],
    "sketch": ["a sketch of a knife.", "a sketch of a flower."],
    "comic": ["a comic of a knife.", "a comic of a flower.", "a comic of a pill.", "a comic of a tree."],
}


def make_prompts(clip, config: PromptConfig, seed: int = 0) -> TaskPrompts:
    info = clip.info
    prompts = TaskPrompts(TASKS, GROUPS, config, info.vision_width, info.vision_layers,
                          info.text_width, info.text_layers)
    prompts.reset_parameters(std=0.5, generator=torch.Generator().manual_seed(seed))
    return prompts


def test_zero_prompt_tokens_reproduce_bare_open_clip(tiny_clip):
    enc = PromptedCLIP(tiny_clip.model)
    images = torch.randn(4, 3, 32, 32)
    tokens = tiny_clip.tokenizer(["a photo of a knife.", "a sketch", "x", "a very long caption " * 5])
    empty_v = torch.zeros(4, enc.vision_layers, 0, enc.vision_width)
    empty_t = torch.zeros(4, enc.text_layers, 0, enc.text_width)
    with torch.no_grad():
        bare_img = tiny_clip.model.encode_image(images)
        bare_txt = tiny_clip.model.encode_text(tokens)
        for prompts in (None, empty_v):
            assert (enc.encode_image(images, prompts, normalize=False) - bare_img).abs().max() <= 1e-5
        for prompts in (None, empty_t):
            assert (enc.encode_text(tokens, prompts, normalize=False) - bare_txt).abs().max() <= 1e-5


def test_prompts_change_the_output(tiny_clip):
    """The converse of the zero-token test: the prompt path is really taken."""
    enc = PromptedCLIP(tiny_clip.model)
    prompts = make_prompts(tiny_clip, PromptConfig(2, 2))
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        bare = enc.encode_image(images)
        prompted = enc.encode_image(images, prompts.vision_bank()[[0, 1]])
    assert (bare - prompted).abs().max() > 1e-3


def test_mixed_task_batch_equals_per_task_runs(tiny_clip):
    enc = PromptedCLIP(tiny_clip.model)
    model = MultiTaskCLIP(enc, make_prompts(tiny_clip, PromptConfig(2, 3)), LABELS, tiny_clip.tokenizer)
    torch.manual_seed(1)
    images = torch.randn(9, 3, 32, 32)
    task_idx = torch.tensor([0, 2, 1, 1, 0, 2, 2, 0, 1])
    with torch.no_grad():
        mixed = model(images, task_idx)
        assert mixed.shape == (9, 4)
        for t in range(3):
            rows = (task_idx == t).nonzero().flatten()
            alone = model(images[rows], task_idx[rows])
            c = len(LABELS[TASKS[t]])
            torch.testing.assert_close(mixed[rows][:, :c], alone[:, :c], rtol=0, atol=1e-5)
            assert torch.isinf(mixed[rows][:, c:]).all()


def reference_encode_image(clip, images, prompts):
    """Deep prompts as written in the design, on open_clip's own pieces: before block k < depth the
    sequence is [original tokens, layer k's prompts] (a fresh concatenation); deeper blocks carry
    the slots; pooling sees the original tokens only."""
    visual = clip.visual
    x = visual._embeds(images)
    L0, depth = x.shape[1], prompts.shape[1]
    for k, blk in enumerate(visual.transformer.resblocks):
        if k < depth:
            x = torch.cat([x[:, :L0], prompts[:, k]], dim=1)
        x = blk(x)
    pooled, _ = visual._pool(x[:, :L0])
    return pooled @ visual.proj


def test_depth_limits_fresh_prompts(tiny_clip):
    """Only layers < depth receive fresh prompts; deeper layers carry the slots. The in-place
    token buffer computes exactly what the per-layer concatenation computes."""
    enc = PromptedCLIP(tiny_clip.model)
    images = torch.randn(2, 3, 32, 32)
    p = torch.randn(2, enc.vision_layers, 3, enc.vision_width)
    with torch.no_grad():
        for depth in (1, enc.vision_layers):
            got = enc.encode_image(images, p[:, :depth], normalize=False)
            want = reference_encode_image(tiny_clip.model, images, p[:, :depth])
            assert (got - want).abs().max() <= 1e-5, depth
        shallow = enc.encode_image(images, p[:, :1])
        deep = enc.encode_image(images, p)
    assert (shallow - deep).abs().max() > 1e-3  # layer 1's fresh prompts are really used


def test_training_step_touches_only_task_and_its_group(tiny_clip):
    enc = PromptedCLIP(tiny_clip.model)
    prompts = make_prompts(tiny_clip, PromptConfig(2, 2))
    model = MultiTaskCLIP(enc, prompts, LABELS, tiny_clip.tokenizer)
    frozen = {k: v.clone() for k, v in tiny_clip.model.state_dict().items()}
    before = {k: v.detach().clone() for k, v in prompts.named_parameters()}
    opt = torch.optim.AdamW(prompts.parameters(), lr=1e-2, weight_decay=0.1)

    model.train()
    images = torch.randn(4, 3, 32, 32)
    task_idx = torch.zeros(4, dtype=torch.long)  # task A = photo, group g0 = {photo, comic}
    loss = torch.nn.functional.cross_entropy(model(images, task_idx), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert all(p.grad is None for p in tiny_clip.model.parameters())
    opt.step()

    for k, v in tiny_clip.model.state_dict().items():
        assert torch.equal(v, frozen[k]), f"frozen CLIP tensor {k} changed"
    after = dict(prompts.named_parameters())
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"vision_group.g0", "text_group.g0", "vision_private.photo", "text_private.photo"}


def test_text_features_cached_until_prompts_change(tiny_clip):
    enc = PromptedCLIP(tiny_clip.model)
    prompts = make_prompts(tiny_clip, PromptConfig(1, 1))
    model = MultiTaskCLIP(enc, prompts, LABELS, tiny_clip.tokenizer).eval()
    with torch.no_grad():
        first = model.text_features("sketch")
        assert model.text_features("sketch") is first
        prompts.text_private["sketch"].add_(0.5)
        second = model.text_features("sketch")
    assert second is not first and not torch.allclose(first, second)
