"""PSG Text Encode: CLIP Text Encode that also passes its text on (prompt-to-prompt aligns tokens)."""

from __future__ import annotations

from comfy_api.latest import io


class PSGTextEncode(io.ComfyNode):
    """CLIP Text Encode that also passes its text on: the P2P sampler aligns the prompts' tokens."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PSGTextEncode",
            display_name="PSG Text Encode",
            category="PSG/prompt-to-prompt",
            description=("Like CLIP Text Encode, and also outputs the text itself, so one prompt box feeds "
                         "both the inversion (CONDITIONING) and the PSG P2P Sampler (which aligns the "
                         "prompts' tokens)."),
            inputs=[
                io.Clip.Input("clip", tooltip="The checkpoint's CLIP."),
                io.String.Input("text", multiline=True, dynamic_prompts=True, tooltip="The prompt."),
            ],
            outputs=[
                io.Conditioning.Output(display_name="conditioning",
                                       tooltip="The encoded prompt, as from CLIP Text Encode."),
                io.String.Output(display_name="text", tooltip="The prompt text, for the PSG P2P Sampler."),
            ],
        )

    @classmethod
    def execute(cls, clip, text) -> io.NodeOutput:
        if clip is None or not hasattr(clip, "tokenize"):
            raise ValueError("PSG Text Encode: the 'clip' input is not a CLIP "
                             "(connect the checkpoint's CLIP output).")
        return io.NodeOutput(clip.encode_from_tokens_scheduled(clip.tokenize(text)), text)
