"""SpacetimePipeline: text-to-video, image-to-video, extension, interpolation and long video.

    from pipelines import SpacetimePipeline
    pipe = SpacetimePipeline.from_pretrained("my-model")
    video = pipe("a red circle moves to the right", generator=torch.Generator().manual_seed(0)).frames[0]

A diffusers `DiffusionPipeline` with the usual contract: `from_pretrained(folder)` reads the VAE,
the DiT, the text encoders and the sampling defaults from a model folder, and `__call__` checks
its inputs, encodes the prompt, prepares the given frames, denoises window after window with
`callback_on_step_end` after every step, decodes, and returns a `SpacetimePipelineOutput`.

Every task is the same sampler (see `pipelines.long_video`): a line of latent frames, some of them
given. Pass `image=` for image-to-video, `video=` to extend a clip, `image=` and `last_image=` to
interpolate, and any `num_frames` (beyond the model's native length the clip is made window by
window). `on_frames=` receives uint8 frames as they are decoded, so a clip of any length can go
to a file in bounded memory.

A model folder:

    model_index.json        class, version, native frames / size / fps, sampling defaults, and
                            "text_encoders": installed encoders by name ("minilm", the default;
                            "mpnet") or the folder names of encoders saved with it
    vae/                    config.json + diffusion_pytorch_model.safetensors (vae3d)
    transformer/            config.json + diffusion_pytorch_model.safetensors (video_dit)
    text_encoder_N/         optional: an encoder saved with the folder (a transformers model)
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.utils import BaseOutput

from pipelines.errors import UserError
from pipelines.long_video import Window, plan_windows, sample_windows
from pipelines.video_io import write_json
from video_dit.text import installed_encoder_name, is_installed_name

logger = logging.getLogger(__name__)

MODEL_INDEX = "model_index.json"
MODEL_FORMAT = 1  # the layout of a model folder this version reads and writes (model_index.json "format")
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
DEFAULT_ENCODER = "minilm"  # in model_index.json: the text encoder installed with the package
NO_DEFAULT_MODEL = (
    "no default model is installed in this version; pass --model DIR "
    "(a folder written by SpacetimePipeline.save_pretrained or spacetime train)"
)


def default_model_path(part: str | None = None) -> Path:
    """The model folder shipped inside the package, or a UserError saying that none is installed.
    With `part` ("vae"), that part's own folder when it is installed, even before the whole model is."""
    path = Path(__file__).resolve().parent / "default_model"
    if part is not None and (path / part / "config.json").is_file():
        return path / part
    if not (path / MODEL_INDEX).is_file():
        raise UserError(NO_DEFAULT_MODEL)
    return path


@dataclass
class SpacetimePipelineOutput(BaseOutput):
    """What a pipeline call returns.

    frames: the video, by `output_type`: "np" uint8 (1, T, H, W, 3); "pt" float (1, 3, T, H, W)
        in [-1, 1]; "pil" a list holding one list of PIL images; "latent" the latents
        (1, C, T', H', W'); None when the frames went to `on_frames` instead.
    fps: the frame rate the clip is meant to play at.
    seed: the seed of the generator (drawn at random, and recorded here, when none was passed).
    notices: what was changed about the request (frames or size rounded, prompt truncated).
    num_frames, height, width: the size of the clip made (extension: input frames + new frames).
    guidance: the guidance scale the clip was made with (`SpacetimePipeline.guidance_scales`).
    """

    frames: Any
    fps: float
    seed: int
    notices: list[str] = field(default_factory=list)
    num_frames: int = 0
    height: int = 0
    width: int = 0
    guidance: float | None = None


@dataclass
class Request:
    """A checked request: the sizes the model can make, and the notices about what was changed."""

    num_frames: int  # pixel frames to make (extension: the new ones)
    height: int
    width: int
    latent_frames: int  # latent frames of the whole clip (extension: including the input's tail)
    notices: list[str] = field(default_factory=list)


class SpacetimePipeline(DiffusionPipeline):
    r"""Text-to-video, image-to-video, extension, interpolation and long video with one sampler.

    Args:
        vae: a `vae3d.CausalVideoVAE`.
        transformer: a `video_dit.VideoDiT` whose `in_channels` is the VAE's latent channels.
        text_encoder: a `video_dit.text.TextEncoders` (one or more encoders, in the DiT's order).
        native_frames, height, width: the clip size the model was trained on (pixels; frames 1 + 4k).
        fps: the frame rate its clips play at.
        num_inference_steps, guidance_scale: sampling defaults.
        given_guidance_scale: the guidance of calls that start from given frames (image-to-video,
            extension, interpolation), in every window; None: `guidance_scale`. A still or a video
            already shows the content, as it looks, and strong guidance re-renders it brighter and
            harsher than it was given. (A long text-to-video clip keeps `guidance_scale` in every
            window: its later windows continue the look of its first.)
        guidance_rescale: default strength of `video_dit.flow.rescale_guidance` (0 = plain guidance).
        guidance_interval: (low, high) noise levels between which guidance applies; below and
            above, steps take the prompt's own estimate (half the batch: no empty-prompt branch). Layout,
            colour and motion are settled at high noise; strong guidance at low noise only
            sharpens what is already there into artefacts (a blocky texture on a plain
            background, ragged edges). (0, 1): every step.
        shift: timestep shift of the schedule; None picks it from the token count
            (`video_dit.flow.shift_for_tokens`).
        context_latent_frames: latent frames of the previous window given to the next (long video).
        context_noise: noise level of the given frames (the level the model was trained with).
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"

    def __init__(
        self,
        vae,
        transformer,
        text_encoder,
        native_frames: int = 17,
        height: int = 64,
        width: int = 64,
        fps: float = 8.0,
        num_inference_steps: int = 30,
        guidance_scale: float = 5.0,
        shift: float | None = None,
        context_latent_frames: int = 2,
        context_noise: float = 0.05,
        guidance_rescale: float = 0.0,
        given_guidance_scale: float | None = None,
        guidance_interval: tuple[float, float] | list[float] = (0.0, 1.0),
    ):
        super().__init__()
        self.register_modules(vae=vae, transformer=transformer, text_encoder=text_encoder)
        self.register_to_config(
            native_frames=int(native_frames),
            height=int(height),
            width=int(width),
            fps=float(fps),
            num_inference_steps=int(num_inference_steps),
            guidance_scale=float(guidance_scale),
            shift=None if shift is None else float(shift),
            context_latent_frames=int(context_latent_frames),
            context_noise=float(context_noise),
            guidance_rescale=float(guidance_rescale),
            given_guidance_scale=None if given_guidance_scale is None else float(given_guidance_scale),
            guidance_interval=[float(v) for v in guidance_interval],
        )
        self._check_parts()

    def to(self, *args, **kwargs) -> "SpacetimePipeline":
        """Move (and/or cast) every part: `pipe.to("cuda")`, `pipe.to(torch.bfloat16)`, `pipe.to(device, dtype)`."""
        device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
        for arg in args:
            if isinstance(arg, torch.dtype):
                dtype = arg
            else:
                device = arg
        moves = {k: v for k, v in dict(device=device, dtype=dtype).items() if v is not None}
        for module in (self.vae, self.transformer, self.text_encoder):
            if isinstance(module, torch.nn.Module) and moves:
                module.to(**moves)
        self.__dict__.pop("_text_cache", None)
        return self

    @property
    def device(self) -> torch.device:
        """Where the transformer runs (the text encoders may stay on the CPU)."""
        return next(self.transformer.parameters()).device

    @property
    def _execution_device(self) -> torch.device:
        # diffusers walks every module looking for offloading hooks (tens of ms per call on a
        # large model); do that only when some part has such hooks.
        if any(hasattr(m, "_hf_hook") or hasattr(m, "_diffusers_hook") for m in (self.vae, self.transformer)):
            return super()._execution_device
        return self.device

    # ---- geometry --------------------------------------------------------------------------

    @property
    def temporal_factor(self) -> int:
        return int(self.vae.temporal_factor)

    @property
    def spatial_factor(self) -> int:
        return int(self.vae.spatial_factor)

    @property
    def size_multiple(self) -> int:
        """Heights and widths must be multiples of this (VAE factor x DiT patch)."""
        _, ph, pw = self.transformer.patch
        return self.spatial_factor * math.lcm(ph, pw)

    @property
    def native_latent_frames(self) -> int:
        return self.latent_frames(self.config.native_frames)

    def latent_frames(self, num_frames: int) -> int:
        """Latent frames of a clip of `num_frames` (1 + 4k) pixel frames."""
        return 1 + (num_frames - 1) // self.temporal_factor

    def _latents_ok(self, latent_frames: int) -> bool:
        # Windows shorter than the native length must divide by the DiT's temporal patch.
        pt = self.transformer.patch[0]
        return latent_frames >= self.native_latent_frames or latent_frames % pt == 0

    def _check_parts(self) -> None:
        channels = getattr(self.vae.config, "latent_channels", None)
        if channels is not None and channels != self.transformer.config.in_channels:
            raise UserError(
                f"the VAE makes {channels}-channel latents but the DiT takes in_channels="
                f"{self.transformer.config.in_channels}; pair a DiT trained on this VAE"
            )
        dims = tuple(self.transformer.config.text_dims)
        have = tuple(self.text_encoder.dims) if self.text_encoder is not None else ()
        if dims != have:
            raise UserError(
                f"the DiT expects text encoders of widths {list(dims)} but the pipeline has {list(have)}; "
                "give the encoders the DiT was trained with"
            )
        c = self.config
        if (c.native_frames - 1) % self.temporal_factor or c.native_frames < 1:
            raise UserError(f"native_frames={c.native_frames}; expected 1 + {self.temporal_factor}k")
        if c.height % self.size_multiple or c.width % self.size_multiple:
            raise UserError(f"native size {c.width}x{c.height}; both sides must be multiples of {self.size_multiple}")
        if self.native_latent_frames > 1 and not 1 <= c.context_latent_frames < self.native_latent_frames:
            raise UserError(
                f"context_latent_frames={c.context_latent_frames}; expected 1 to {self.native_latent_frames - 1} "
                f"(the native length is {self.native_latent_frames} latent frames)"
            )

    # ---- checking a request ----------------------------------------------------------------

    def check_inputs(
        self,
        prompt: str,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        extend: bool = False,
        input_frames: int | None = None,
        allow_empty_prompt: bool = False,
    ) -> Request:
        """Round frames and size to the nearest the model can make, and say so in the notices.

        With `extend`, `num_frames` counts the new frames after an input of `input_frames`.
        Raises UserError for what cannot be rounded (an empty prompt, a non-positive size, an
        input video too short to extend from).
        """
        notices: list[str] = []
        if not isinstance(prompt, str):
            raise UserError(f"prompt must be a string, got {type(prompt).__name__}")
        if not prompt.strip() and not allow_empty_prompt:
            raise UserError('the prompt is empty; describe the clip, e.g. "a red circle moves to the right"')
        notices += self.prompt_notices(prompt)

        c = self.config
        height = c.height if height is None else int(height)
        width = c.width if width is None else int(width)
        if height < 1 or width < 1:
            raise UserError(f"size {width}x{height} is not a frame size; use e.g. {c.width}x{c.height}")
        m = self.size_multiple
        h2, w2 = max(m, _nearest(height / m) * m), max(m, _nearest(width / m) * m)
        if (h2, w2) != (height, width):
            notices.append(f"size {width}x{height} rounded to {w2}x{h2} (sides must be multiples of {m})")
        tf = self.temporal_factor

        if not extend:
            frames = c.native_frames if num_frames is None else int(num_frames)
            if frames < 1:
                raise UserError(f"frames={frames}; ask for 1 or more (the model's native length is {c.native_frames})")
            rounded = self._nearest_frames(frames)
            if rounded != frames:
                notices.append(f"frames {frames} rounded to {rounded} (the model makes 1 + {tf}k frames)")
            return Request(rounded, h2, w2, self.latent_frames(rounded), notices)

        if num_frames is None:
            raise UserError("say how many new frames to add, e.g. --frames 16")
        frames = int(num_frames)
        if frames < 1:
            raise UserError(f"frames={frames}; ask for {tf} or more new frames")
        rounded = max(tf, _nearest(frames / tf) * tf)
        if rounded != frames:
            notices.append(f"new frames {frames} rounded to {rounded} (extension adds frames in groups of {tf})")
        need = self.min_extend_frames()
        if input_frames is None or input_frames < need:
            raise UserError(
                f"the input video has {input_frames or 0} frames; extending needs at least {need} "
                f"(the model continues from {c.context_latent_frames} latent frames)"
            )
        known = self.prefix_latent_frames(input_frames)
        return Request(rounded, h2, w2, known + rounded // tf, notices)

    def _nearest_frames(self, frames: int) -> int:
        tf = self.temporal_factor
        k = max(0, _nearest((frames - 1) / tf))
        candidates = sorted({1 + tf * j for j in range(max(0, k - 8), k + 9)}, key=lambda n: (abs(n - frames), -n))
        for n in candidates:
            if self._latents_ok(self.latent_frames(n)):
                return n
        return self.config.native_frames

    def min_extend_frames(self) -> int:
        """The shortest input video that gives the context the model continues from."""
        return max(2, 1 + self.temporal_factor * (self.config.context_latent_frames - 1))

    def prefix_latent_frames(self, input_frames: int) -> int:
        """Latent frames encoded from the end of an input video: at most one native window."""
        return min(self.latent_frames(input_frames), max(1, self.native_latent_frames - 1))

    def windows(self, request: Request, known: int = 0) -> list[Window]:
        """The windows a request is made in (`known`: latent frames given at the start)."""
        return plan_windows(request.latent_frames, self.native_latent_frames, known, self.config.context_latent_frames)

    def prompt_notices(self, prompt: str) -> list[str]:
        """'prompt truncated ...' for each text encoder that takes fewer tokens than the prompt has."""
        notices = []
        encoders = list(self.text_encoder.encoders) if self.text_encoder is not None else []
        for i, encoder in enumerate(encoders):
            count, limit = encoder.token_counts([prompt])[0], encoder.max_length
            if count > limit:
                which = f"text encoder {i}" if len(encoders) > 1 else "the text encoder"
                notices.append(f"prompt truncated: it has {count} tokens and {which} takes {limit}")
        return notices

    # ---- encoding --------------------------------------------------------------------------

    def encode_prompt(self, prompt: str, negative_prompt: str | None = None, do_guidance: bool = True):
        """(cond, uncond) model keyword arguments; uncond is the dropped-text embedding unless a
        negative prompt is given, and None without guidance."""
        device, dtype = self._execution_device, next(self.transformer.parameters()).dtype
        if self.text_encoder is None or not self.transformer.config.text_dims:
            return {}, None

        def cast(states, masks):
            return dict(
                text_states=[s.to(device=device, dtype=dtype) for s in states],
                text_masks=[None if m is None else m.to(device) for m in masks],
            )

        cond = cast(*self._encode_text(prompt))
        if not do_guidance:
            return cond, None
        uncond = cast(*self._encode_text(negative_prompt or None))
        return cond, uncond

    @torch.no_grad()
    def _encode_text(self, prompt: str | None):
        """The text encoders' (states, masks) for a prompt, or for dropped text (None); the last
        few are kept, so calls that repeat a prompt do not run the encoders again."""
        cache = self.__dict__.setdefault("_text_cache", {})
        if prompt not in cache:
            while len(cache) >= 8:
                cache.pop(next(iter(cache)))
            cache[prompt] = self.text_encoder.null(1) if prompt is None else self.text_encoder.encode([prompt])
        return cache[prompt]

    @torch.no_grad()
    def encode_frames(self, frames: np.ndarray, width: int, height: int) -> torch.Tensor:
        """uint8 frames (T, H, W, 3), T = 1 + 4k, resized and centre-cropped -> latents (1, C, T', H', W')."""
        from pipelines.video_io import frames_to_tensor, resize_and_crop

        video = frames_to_tensor(resize_and_crop(frames, width, height))  # (1, 3, T, H, W)
        vae_dtype = next(self.vae.parameters()).dtype
        z = self.vae.encode_latents(video.to(self._execution_device, vae_dtype))
        return z.float()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        """Latents (1, C, T', H', W') -> uint8 frames (1, T, H, W, 3), in one pass of the VAE."""
        pixels = self.vae.decode_latents(latents.to(self._execution_device, self._vae_dtype()))
        return _tensor_to_frames(pixels)[None]

    # ---- the call --------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        negative_prompt: str | None = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        guidance_rescale: float | None = None,
        given_guidance_scale: float | None = None,
        image: np.ndarray | str | None = None,
        last_image: np.ndarray | str | None = None,
        video: np.ndarray | str | None = None,
        generator: torch.Generator | None = None,
        callback_on_step_end: Callable | None = None,
        on_frames: Callable[[np.ndarray], None] | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        guidance_interval: tuple[float, float] | None = None,
    ):
        r"""Make a clip.

        Args:
            prompt: what the clip shows.
            negative_prompt: what to steer away from (guidance pushes away from it instead of
                from the empty prompt).
            num_frames: pixel frames (1 + 4k; others are rounded, with a notice); longer than the
                native length makes a long video window by window. With `video`: the new frames.
            height, width: pixels (multiples of `size_multiple`; others are rounded).
            num_inference_steps, guidance_scale: default to the model folder's values. A
                guidance_scale given here holds for every window.
            given_guidance_scale: the guidance when a still or a video is given (see the class);
                defaults to `guidance_scale` when that is given here, else to the folder's.
            guidance_rescale: 0 to 1, how far the guided estimate is scaled back to the spread of
                the prompt's own (`video_dit.flow.rescale_guidance`); tames the brighter, harsher
                look of strong guidance. Defaults to the model folder's value.
            image: a still (path or uint8 (H, W, 3)) for the first frame: image-to-video.
            last_image: a still for the last frame (with `image`: interpolation).
            video: a clip (path or uint8 (T, H, W, 3)) to continue: the output is its frames,
                unchanged (resized to the output size), then `num_frames` new ones.
            generator: a torch.Generator (CPU) for the noise; same seed, same frames.
            callback_on_step_end: diffusers-style `fn(pipe, step, sigma, {"latents": x, "window":
                i}) -> dict`; a returned "latents" replaces the current latents.
            on_frames: receives uint8 frames (t, H, W, 3) as soon as they are decoded; the output
                then holds no frames, so memory stays bounded for any length.
            output_type: "np" (uint8), "pt" (float in [-1, 1]), "pil", or "latent".
            return_dict: False returns a tuple (frames,).
            guidance_interval: (low, high) noise levels where guidance applies (see the class);
                defaults to the model folder's.
        """
        if output_type not in ("np", "pt", "pil", "latent"):
            raise UserError(f"output_type={output_type!r}; expected 'np', 'pt', 'pil' or 'latent'")
        if output_type == "latent" and on_frames is not None:
            raise UserError("on_frames receives decoded frames; it cannot be used with output_type='latent'")
        c = self.config
        steps = c.num_inference_steps if num_inference_steps is None else int(num_inference_steps)
        guidance, given_guidance = self.guidance_scales(guidance_scale, given_guidance_scale)
        if steps < 1:
            raise UserError(f"steps={steps}; use 1 or more (the model's default is {c.num_inference_steps})")
        for name, value, usual in (("guidance", guidance, c.guidance_scale),
                                   ("given_guidance", given_guidance, self.guidance_scales()[1])):
            if value < 0:
                raise UserError(f"{name}={value:g}; use 1 (none) or more, e.g. {usual:g}")
        rescale = c.guidance_rescale if guidance_rescale is None else float(guidance_rescale)
        if not 0.0 <= rescale <= 1.0:
            raise UserError(f"guidance_rescale={rescale}; use a strength from 0 (off) to 1, e.g. 0.7")
        from video_dit import flow

        try:
            interval = flow.check_guidance_interval(c.guidance_interval if guidance_interval is None else guidance_interval)
        except ValueError as err:
            raise UserError(str(err)) from None
        if image is not None and video is not None:
            raise UserError("give a still (image) or a video to extend, not both")
        if last_image is not None and video is not None:
            raise UserError("last_image is for image-to-video and interpolation; it cannot be used with a video")

        # 1. Inputs: read them first, so a bad file fails before any work.
        from pipelines.video_io import read_image, read_video

        input_frames = None
        if video is not None:
            input_frames = read_video(video).frames if isinstance(video, (str, Path)) else np.asarray(video)
            _check_frames(input_frames, "video")
        still = _load_still(image, read_image)
        last_still = _load_still(last_image, read_image)
        request = self.check_inputs(
            prompt, num_frames, height, width, extend=video is not None,
            input_frames=None if input_frames is None else len(input_frames),
            allow_empty_prompt=still is not None or input_frames is not None,
        )
        for notice in request.notices:
            logger.warning(notice)
        if last_still is not None and request.latent_frames < 2:
            raise UserError("interpolation needs at least 1 + 4 frames between the first and last still")
        h, w = request.height, request.width

        # 2. Seed.
        if generator is None:
            generator = torch.Generator().manual_seed(secrets.randbelow(2**31))
        seed = generator.initial_seed()

        # 3. Prompt.
        if still is not None or last_still is not None or input_frames is not None:
            guidance = given_guidance  # the content is given: keep to its look
        do_guidance = guidance != 1.0
        cond, uncond = self.encode_prompt(prompt, negative_prompt, do_guidance)

        # 4. Given latents: the still, or the tail of the input video.
        known = end_given = None
        emitted_prefix = None
        if still is not None:
            known = self.encode_frames(still, w, h)  # (1, C, 1, H', W')
        if last_still is not None:
            end_given = self.encode_frames(last_still, w, h)
        if input_frames is not None:
            from pipelines.video_io import resize_and_crop

            emitted_prefix = resize_and_crop(input_frames, w, h)
            q = self.prefix_latent_frames(len(input_frames))
            tail = emitted_prefix[len(emitted_prefix) - (1 + self.temporal_factor * (q - 1)) :]
            known = self.encode_frames(tail, w, h)  # (1, C, q, H', W')

        # 5. Windows, then sample and decode them in turn.
        native = self.native_latent_frames
        windows = self.windows(request, 0 if known is None else known.shape[2])
        shift = c.shift if c.shift is not None else self._shift(min(native, request.latent_frames), h, w)

        channels = self.transformer.config.in_channels
        like = torch.zeros(1, channels, 1, h // self.spatial_factor, w // self.spatial_factor,
                           device=self._execution_device)
        progress = self.progress_bar(total=max(1, len(windows)) * steps)

        def sample_window(index: int, window: Window, given: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            if len(windows) > 1:
                progress.set_description(f"window {index + 1}/{len(windows)}")
            noise = torch.randn(given.shape, generator=generator, dtype=torch.float32).to(given.device)

            def on_step(i, sigma, latents):
                progress.update(1)
                if callback_on_step_end is None:
                    return None
                out = callback_on_step_end(self, i, sigma, {"latents": latents, "window": index}) or {}
                return out.get("latents")

            return flow.sample(
                self.transformer, noise, cond, uncond, guidance=guidance, num_steps=steps, shift=shift,
                guidance_rescale=rescale, guidance_interval=interval,
                given=given if bool(mask.any()) else None, given_mask=mask if bool(mask.any()) else None,
                context_noise=c.context_noise, callback_on_step_end=on_step, generator=generator,
            )

        collected: list = []
        decoder = None if output_type == "latent" else self.vae.streaming_decoder()

        def emit(frames_np: np.ndarray | None, pixels: torch.Tensor | None) -> None:
            if on_frames is not None:
                on_frames(frames_np)
            elif output_type == "pt":
                collected.append(pixels.float().cpu())
            else:
                collected.append(frames_np)

        def decode(latents: torch.Tensor, show: bool = True) -> None:
            # One latent frame at a time: the decoder's working memory is that of one latent
            # frame (4 pixel frames) in every window, the first included.
            for z in latents.split(1, dim=2):
                pixels = decoder.decode(z.to(self._vae_dtype()))  # (1, 3, 1 or 4, H, W)
                if show:
                    emit(_tensor_to_frames(pixels), pixels)

        if known is not None:
            if output_type == "latent":
                collected.append(known)
            elif emitted_prefix is not None:  # extension: the input's own frames, unchanged
                decode(known, show=False)  # primes the decoder's caches with the input's latents
                emit(emitted_prefix, _frames_to_tensor(emitted_prefix))
            else:
                decode(known)
        for _, window, new in sample_windows(windows, sample_window, like, known, end_given):
            if output_type == "latent":
                collected.append(new)
            else:
                decode(new)
        progress.close()

        total = request.num_frames + (0 if emitted_prefix is None else len(emitted_prefix))
        if on_frames is not None:
            frames = None
        elif output_type == "latent":
            frames = torch.cat(collected, dim=2)
        elif output_type == "pt":
            frames = torch.cat(collected, dim=2)
        else:
            frames = np.concatenate(collected)[None]
            if output_type == "pil":
                from PIL import Image

                frames = [[Image.fromarray(f) for f in frames[0]]]
        self.maybe_free_model_hooks()
        out = SpacetimePipelineOutput(frames=frames, fps=float(c.fps), seed=seed, notices=request.notices,
                                      num_frames=total, height=h, width=w, guidance=guidance)
        return out if return_dict else (frames,)

    def guidance_scales(self, guidance_scale: float | None = None,
                        given_guidance_scale: float | None = None) -> tuple[float, float]:
        """(guidance of text-to-video, guidance when a still or a video is given) for a call's
        arguments: a guidance_scale passed holds for both unless given_guidance_scale is passed too;
        otherwise each comes from the folder (given_guidance_scale None: guidance_scale)."""
        c = self.config
        if guidance_scale is not None:
            guidance = float(guidance_scale)
            given = guidance
        else:
            guidance = float(c.guidance_scale)
            given = guidance if c.given_guidance_scale is None else float(c.given_guidance_scale)
        if given_guidance_scale is not None:
            given = float(given_guidance_scale)
        return guidance, given

    def _vae_dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def _shift(self, latent_frames: int, height: int, width: int) -> float:
        from video_dit import flow

        tokens = self.transformer.num_tokens(latent_frames, height // self.spatial_factor, width // self.spatial_factor)
        return flow.shift_for_tokens(tokens)

    # ---- saving and loading ----------------------------------------------------------------

    def save_pretrained(self, save_directory, safe_serialization: bool = True, **kwargs) -> None:
        """Write a model folder: model_index.json, vae/, transformer/ and any text_encoder_N/."""
        if not safe_serialization:
            raise UserError("model folders are written as safetensors only")
        root = Path(save_directory)
        root.mkdir(parents=True, exist_ok=True)
        self.vae.save_pretrained(root / "vae", safe_serialization=True)
        self.transformer.save_pretrained(root / "transformer", safe_serialization=True)
        encoders, lengths = [], []
        for i, encoder in enumerate(self.text_encoder.encoders if self.text_encoder is not None else []):
            installed = installed_encoder_name(encoder.path)
            if installed:
                encoders.append(installed)
            else:  # the encoder's own folder (config, weights, tokenizer) is copied in
                name = f"text_encoder_{i}"
                if (root / name).exists():
                    shutil.rmtree(root / name)
                shutil.copytree(encoder.path, root / name)
                encoders.append(name)
            lengths.append(int(encoder.max_length))
        index = {
            "_class_name": type(self).__name__,
            "_diffusers_version": _diffusers_version(),
            "spacetime_version": _version(),
            "format": MODEL_FORMAT,
            "vae": [type(self.vae).__module__.split(".")[0], type(self.vae).__name__],
            "transformer": [type(self.transformer).__module__.split(".")[0], type(self.transformer).__name__],
            "text_encoders": encoders,
            "text_max_lengths": lengths,
            **{k: self.config[k] for k in _SETTINGS},
        }
        write_json(root / MODEL_INDEX, index, overwrite=True)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, torch_dtype: torch.dtype | None = None,
                        device: str | torch.device | None = None, **kwargs) -> "SpacetimePipeline":
        """Read a model folder; every missing or mismatched part is a one-line UserError."""
        root = Path(pretrained_model_name_or_path)
        if not root.is_dir():
            raise UserError(f"model folder {root} not found; pass a folder written by "
                            "SpacetimePipeline.save_pretrained or spacetime train")
        index = _read_index(root)
        expected = [MODEL_INDEX, f"vae/config.json", f"vae/{WEIGHTS_NAME}", f"transformer/config.json",
                    f"transformer/{WEIGHTS_NAME}"]
        for name in index.get("text_encoders", []):
            if not is_installed_name(name):
                expected.append(f"{name}/config.json")
        missing = [p for p in expected if not (root / p).is_file()]
        if missing:
            raise UserError(f"model folder {root} is missing {', '.join(missing)}; "
                            f"a model folder holds {', '.join(expected)}")

        from vae3d import CausalVideoVAE
        from video_dit import VideoDiT
        from video_dit.text import TextEncoders

        vae = _load_model(CausalVideoVAE, root / "vae")
        transformer = _load_model(VideoDiT, root / "transformer")
        names = index.get("text_encoders", [])
        lengths = index.get("text_max_lengths") or [None] * len(names)
        encoders = []
        for name, length in zip(names, lengths):
            installed = is_installed_name(name)
            encoders.append(load_text_encoder(name if installed else root / name, max_length=length,
                                              label=f"the installed text encoder {name!r}" if installed else None))
        settings = {k: index[k] for k in _SETTINGS if k in index}
        pipe = cls(vae=vae, transformer=transformer, text_encoder=TextEncoders(encoders) if encoders else None,
                   **settings)
        pipe.eval()
        if torch_dtype is not None:
            pipe.transformer.to(dtype=torch_dtype)
        if device is not None:
            pipe.to(device)
        return pipe

    @classmethod
    def from_parts(cls, vae, transformer, text_encoders=(DEFAULT_ENCODER,), **settings) -> "SpacetimePipeline":
        """Assemble a pipeline from separately trained parts, e.g. to write a model folder:

            SpacetimePipeline.from_parts("runs/vae/model", "runs/dit/model", ["minilm"],
                                         native_frames=17, height=64, width=64).save_pretrained("my-model")

        vae, transformer: a model, its `save_pretrained` folder, or a model folder (its part is
        taken). text_encoders: encoder folders, or installed encoders by name ("minilm" or "default",
        "mpnet").
        settings: the sampling settings of `SpacetimePipeline` (native size, steps, ...).
        """
        from vae3d import CausalVideoVAE
        from video_dit import VideoDiT
        from video_dit.text import TextEncoders

        def part(spec, model_cls, name):
            return spec if isinstance(spec, torch.nn.Module) else load_part(name, spec, presets=False)[0]

        encoders = [load_text_encoder(spec) for spec in text_encoders]
        pipe = cls(vae=part(vae, CausalVideoVAE, "vae"), transformer=part(transformer, VideoDiT, "transformer"),
                   text_encoder=TextEncoders(encoders) if encoders else None, **settings)
        return pipe.eval()

    def eval(self) -> "SpacetimePipeline":
        for module in (self.vae, self.transformer, self.text_encoder):
            if isinstance(module, torch.nn.Module):
                module.eval()
        return self


_SETTINGS = ("native_frames", "height", "width", "fps", "num_inference_steps", "guidance_scale", "shift",
             "context_latent_frames", "context_noise", "guidance_rescale", "given_guidance_scale",
             "guidance_interval")


def _is_int(v) -> bool:  # 64 or 64.0 (the pipeline takes int() of it)
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())


def _is_number(v) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _is_guidance_interval(v) -> bool:
    from video_dit.flow import check_guidance_interval

    try:
        check_guidance_interval(v)
    except ValueError:
        return False
    return True


# model_index.json settings: (key, test, what would work)
_SETTING_CHECKS = (
    ("native_frames", lambda v: _is_int(v) and v >= 1, "a whole number of frames, 1 or more"),
    ("height", lambda v: _is_int(v) and v >= 1, "a whole number of pixels, 1 or more"),
    ("width", lambda v: _is_int(v) and v >= 1, "a whole number of pixels, 1 or more"),
    ("fps", lambda v: _is_number(v) and v > 0, "a positive number"),
    ("num_inference_steps", lambda v: _is_int(v) and v >= 1, "a whole number, 1 or more"),
    ("guidance_scale", lambda v: _is_number(v) and v >= 0, "a number >= 0 (1: no guidance)"),
    ("shift", lambda v: v is None or (_is_number(v) and v > 0), "a positive number, or null for automatic"),
    ("context_latent_frames", lambda v: _is_int(v) and v >= 1, "a whole number, 1 or more"),
    ("context_noise", lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    ("guidance_rescale", lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    ("given_guidance_scale", lambda v: v is None or (_is_number(v) and v >= 0),
     "a number >= 0, or null for guidance_scale"),
    ("guidance_interval", lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(map(_is_number, v))
     and _is_guidance_interval(v), "two noise levels [low, high] with 0 <= low < high <= 1, e.g. [0.3, 1.0]"),
)


def setting_problem(key: str, value) -> str | None:
    """None if `value` is a valid model_index.json sampling setting `key`; else what would work."""
    checks = {name: (ok, want) for name, ok, want in _SETTING_CHECKS}
    if key not in checks:
        return f"not a sampling setting; use one of {', '.join(checks)}"
    ok, want = checks[key]
    return None if ok(value) else f"expected {want}"


# ---- helpers ---------------------------------------------------------------------------------


def _nearest(x: float) -> int:
    """Round half up (Python's round() goes to the even neighbour: 2.5 -> 2)."""
    return int(math.floor(x + 0.5))


def _load_still(image, read_image) -> np.ndarray | None:
    if image is None:
        return None
    if isinstance(image, (str, Path)):
        return read_image(image)
    if hasattr(image, "mode"):  # a PIL image
        from pipelines.video_io import _to_rgb_uint8

        return _to_rgb_uint8(image)
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4) or array.dtype != np.uint8:
        raise UserError(f"image must be uint8 (H, W, 3) RGB, got {array.dtype} {tuple(array.shape)}")
    return array[..., :3]


def _check_frames(frames: np.ndarray, name: str) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise UserError(f"{name} must be uint8 frames (T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")


def _tensor_to_frames(pixels: torch.Tensor) -> np.ndarray:
    from pipelines.video_io import tensor_to_frames

    return tensor_to_frames(pixels)


def _frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    from pipelines.video_io import frames_to_tensor

    return frames_to_tensor(frames)


def load_text_encoder(spec, max_length: int | None = None, label: str | None = None):
    """`video_dit.text.TextEncoder(spec)` (an installed name or a folder); any failure to load it
    (ValueError from video_dit, OSError and others from transformers) is a one-line UserError that
    starts with `label` (default: the spec)."""
    from video_dit.text import TextEncoder

    try:
        return TextEncoder(spec, max_length=max_length)
    except Exception as err:
        raise UserError(f"{label or spec}: cannot load the text encoder ({_first_line(err)})") from err


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return (text[:300] + "...") if len(text) > 300 else (text or type(err).__name__)


def _read_index(root: Path) -> dict:
    path = root / MODEL_INDEX
    if not path.is_file():
        raise UserError(f"{root} has no {MODEL_INDEX}; it is not a model folder (expected {MODEL_INDEX}, "
                        "vae/, transformer/)")
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(index, dict) or not isinstance(index.get("text_encoders", []), list):
        raise UserError(f"{path}: expected an object with a 'text_encoders' list")
    if index.get("_class_name", "SpacetimePipeline") != "SpacetimePipeline":
        raise UserError(f"{path} describes a {index['_class_name']}, not a spacetime-video model "
                        "(_class_name SpacetimePipeline)")
    for key in _SETTINGS:
        problem = setting_problem(key, index[key]) if key in index else None
        if problem:
            raise UserError(f"{path}: {key}={json.dumps(index[key])}; {problem}")
    fmt = index.get("format", MODEL_FORMAT)  # folders written before the field existed are format 1
    if not isinstance(fmt, int) or fmt > MODEL_FORMAT or fmt < 1:
        written = index.get("spacetime_version", "an unknown version")
        raise UserError(f"{root} is a model folder of format {fmt!r}, written by spacetime-video {written}; "
                        f"this version ({_version()}) reads format {MODEL_FORMAT}: install a matching version")
    return index


def load_part(part: str, spec=None, *, presets: bool = True) -> tuple[torch.nn.Module, str]:
    """The "vae" or "transformer" that `spec` names, and a name for where it came from.

    spec: a model folder (its part is taken), the part's own `save_pretrained` folder, a vae3d /
    video_dit preset name (random weights, seeded; with `presets`), or None for the installed
    default model's part. Weights are checked against the config (shapes, dtypes) on load."""
    from vae3d import PRESETS as VAE_PRESETS, CausalVideoVAE
    from video_dit import PRESETS as DIT_PRESETS, VideoDiT

    model_cls, known = (CausalVideoVAE, VAE_PRESETS) if part == "vae" else (VideoDiT, DIT_PRESETS)
    if spec is None:
        spec = str(default_model_path(part))
    if presets and spec in known and not Path(spec).exists():
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return model_cls(**known[spec]).eval(), f"preset:{spec}"
    folder = Path(spec)
    hint = f", or a preset ({', '.join(known)})" if presets else ""
    if not folder.is_dir():
        raise UserError(f"{spec}: no such folder; give a model folder, a saved {model_cls.__name__}{hint}")
    if (folder / MODEL_INDEX).is_file():
        folder = folder / part
    missing = [name for name in ("config.json", WEIGHTS_NAME) if not (folder / name).is_file()]
    if missing:
        raise UserError(f"{spec} is not a model folder ({MODEL_INDEX}) or a saved {model_cls.__name__} "
                        f"(missing {', '.join(missing)}){hint}")
    return _load_model(model_cls, folder), str(folder)


def _load_model(model_cls, folder: Path):
    """Load a diffusers model folder; check every tensor against the config's shapes and dtypes."""
    from safetensors import safe_open

    try:
        config = model_cls.load_config(folder)
        model = model_cls.from_config(config)
    except Exception as err:
        raise UserError(f"{folder}/config.json does not describe a {model_cls.__name__} ({_first_line(err)})") from err
    expected = model.state_dict()
    try:
        with safe_open(str(folder / WEIGHTS_NAME), framework="pt") as f:
            keys = set(f.keys())
            missing = sorted(set(expected) - keys)
            unexpected = sorted(keys - set(expected))
            if missing or unexpected:
                parts = []
                if missing:
                    parts.append(f"missing {len(missing)} tensors (e.g. {missing[0]})")
                if unexpected:
                    parts.append(f"{len(unexpected)} unknown tensors (e.g. {unexpected[0]})")
                raise UserError(f"{folder / WEIGHTS_NAME} does not match its config.json: {'; '.join(parts)}")
            state = {}
            for key in expected:
                tensor = f.get_tensor(key)
                want = expected[key]
                if tuple(tensor.shape) != tuple(want.shape):
                    raise UserError(f"{folder / WEIGHTS_NAME}: weights and config.json do not match: tensor {key} "
                                    f"has shape {tuple(tensor.shape)}, the config needs {tuple(want.shape)}")
                if tensor.dtype.is_floating_point != want.dtype.is_floating_point:
                    raise UserError(f"{folder / WEIGHTS_NAME}: tensor {key} is {tensor.dtype}, expected a "
                                    f"{'floating-point' if want.dtype.is_floating_point else 'integer'} tensor")
                state[key] = tensor.to(want.dtype)
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"{folder / WEIGHTS_NAME} is not a readable safetensors file ({_first_line(err)})") from err
    model.load_state_dict(state, strict=True)
    return model.eval()


def _version() -> str:
    from pipelines import __version__

    return __version__


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__
