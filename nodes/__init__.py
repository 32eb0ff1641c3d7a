"""ComfyUI node wrappers: schema, tooltips and host glue. The math lives in ``psg_core`` (the method)
and ``psg_eval`` (evaluation)."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io


class PSGExtension(ComfyExtension):
    """Registers every PSG node with ComfyUI."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        from . import registry

        return registry.all_nodes()


def comfy_entrypoint() -> PSGExtension:
    return PSGExtension()
