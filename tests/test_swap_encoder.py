"""Moving a trained DiT to another text encoder: fitting the token-state map, folding it into the
model, and tools/swap_text_encoder.py end to end."""

import json

import pytest
import torch

from pipeline_tiny import save_tiny_model
from train_helpers import load_tool
from video_dit import PRESETS, VideoDiT
from video_dit.text import fit_translation, fold_translation

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_folded_map_reads_the_new_states_as_the_old_model_read_their_image():
    """The swapped model on new states equals the old model on those states mapped, pooled path and
    other encoders included, for the conditional and the null prompt."""
    torch.manual_seed(0)
    model = VideoDiT(in_channels=4, text_dims=(6, 8), pooled_text=True, **PRESETS["tiny"]).eval()
    for p in model.parameters():
        if not p.any():
            p.data.normal_(0.0, 0.1)
    translation = torch.randn(12, 8)
    swapped = fold_translation(model, 1, translation).eval()
    assert swapped.config.text_dims == (6, 12) and model.config.text_dims == (6, 8)
    x, t = torch.randn(2, 4, 2, 4, 4), torch.rand(2)
    first, new = torch.randn(2, 3, 6), torch.randn(2, 5, 12)
    masks = [torch.ones(2, 3, dtype=torch.bool), torch.tensor([[True] * 5, [True] * 3 + [False] * 2])]
    new = new * masks[1][..., None]
    with torch.no_grad():
        ours = swapped(x, t, [first, new], masks)
        theirs = model(x, t, [first, new @ translation], masks)
        assert torch.allclose(ours, theirs, atol=1e-4)
        null = [torch.zeros(2, 1, 6), torch.zeros(2, 1, 12)], [torch.ones(2, 1, dtype=torch.bool)] * 2
        assert torch.allclose(swapped(x, t, *null), model(x, t, [null[0][0], torch.zeros(2, 1, 8)], null[1]),
                              atol=1e-5)
    with pytest.raises(ValueError, match="encoder 0 of the model has 6"):
        fold_translation(model, 0, translation)
    with pytest.raises(ValueError, match="encoder index 2"):
        fold_translation(model, 2, translation)


class _Linear:
    """An 'encoder' whose states are a fixed function of per-word vectors (one token per word)."""

    def __init__(self, table, extra=None):
        self.table, self.extra = table, extra or {}

    def encode(self, prompts):
        rows = [[self.table[w] for w in p.split()] + self.extra.get(p, []) for p in prompts]
        length = max(len(r) for r in rows)
        states = torch.zeros(len(rows), length, next(iter(self.table.values())).shape[0])
        mask = torch.zeros(len(rows), length, dtype=torch.bool)
        for i, r in enumerate(rows):
            states[i, :len(r)] = torch.stack(r)
            mask[i, :len(r)] = True
        return states, mask


def test_the_fitted_map_recovers_a_linear_relation_and_needs_matching_tokens():
    g = torch.Generator().manual_seed(0)
    words = [f"w{i}" for i in range(40)]
    new = {w: torch.randn(10, generator=g) for w in words}
    true = torch.randn(10, 6, generator=g)
    old = {w: v @ true for w, v in new.items()}
    prompts = [" ".join(words[(i * 7 + k) % 40] for k in range(1 + i % 5)) for i in range(60)]
    translation, explained = fit_translation(_Linear(old), _Linear(new), prompts, ridge=1e-6, batch_size=16)
    assert translation.shape == (10, 6) and torch.allclose(translation, true, atol=1e-3)
    assert explained == pytest.approx(1.0, abs=1e-5)
    longer = _Linear(new, extra={prompts[3]: [new["w0"]]})
    with pytest.raises(ValueError, match=r"cut '.*' into 4 and 5 tokens"):
        fit_translation(_Linear(old), longer, prompts)
    with pytest.raises(ValueError, match="ridge=0"):
        fit_translation(_Linear(old), _Linear(new), prompts, ridge=0)


def test_the_tool_writes_a_model_folder_that_reads_the_new_encoder(tmp_path, capsys):
    """Swapping the tiny model's MiniLM for a tiny T5 saved with MiniLM's tokenizer (so they cut
    captions alike): a loadable folder that names the new encoder; an existing --out is kept
    without --overwrite (exit 2, one line)."""
    from transformers import T5Config, T5Model

    from pipelines.pipeline import SpacetimePipeline
    from video_dit.text import TextEncoder

    model = save_tiny_model(tmp_path / "model")
    t5 = tmp_path / "t5"
    minilm = TextEncoder()
    T5Model(T5Config(vocab_size=minilm.tokenizer.vocab_size, d_model=16, d_kv=4, d_ff=32, num_layers=1,
                     num_heads=4)).save_pretrained(t5)
    minilm.tokenizer.save_pretrained(t5)
    captions = tmp_path / "captions.jsonl"
    captions.write_text("".join(json.dumps({"path": f"c{i}.mp4", "caption": c}) + "\n" for i, c in enumerate(
        ["a red circle moves to the right", "a blue square moves up on a white background",
         "the camera pans left across a photo of a cat", "a small green triangle shrinks"] * 3)))
    tool = load_tool("swap_text_encoder")
    out = tmp_path / "swapped"
    assert tool.main([str(model), "--encoder", str(t5), "--captions", str(captions), "--out", str(out)]) == 0
    assert "the map explains" in capsys.readouterr().out
    pipe = SpacetimePipeline.from_pretrained(out)
    assert tuple(pipe.transformer.config.text_dims) == (16,)
    assert json.loads((out / "model_index.json").read_text())["text_encoders"] == ["text_encoder_0"]
    frames = pipe("a red circle moves to the right", num_frames=9, generator=torch.Generator().manual_seed(0),
                  output_type="np").frames[0]
    assert frames.shape == (9, 32, 32, 3)
    assert tool.main([str(model), "--encoder", str(t5), "--captions", str(captions), "--out", str(out)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    for flags, message in ((["--limit", "0"], "--limit 0: expected at least 2"),
                           (["--ridge", "-1"], "--ridge -1.0: expected a positive"),
                           (["--encoder", str(tmp_path / "nowhere")], "does not exist")):
        args = [str(model), "--encoder", str(t5), "--captions", str(captions), "--out", str(tmp_path / "o"), *flags]
        assert tool.main(args) == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]  # (after transformers' loading bars)
        assert last.startswith("error: ") and message in last
