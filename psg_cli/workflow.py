"""Load an API-format workflow, fill its roles, apply ``--set``, check it against ``object_info``.

Everything here is data manipulation on plain dicts: nothing from a workflow file is ever
evaluated. Errors are :class:`CliError` with one actionable message.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from . import PACK_ROOT, roles
from .errors import CliError

Prompt = dict[str, dict[str, Any]]
MAX_LISTED = 25


def api_dir() -> Path:
    return PACK_ROOT / "example_workflows" / "api"


def available_workflows() -> list[str]:
    return sorted(p.stem for p in api_dir().glob("*.json"))


def load_workflow(name_or_path: str) -> Prompt:
    """A shipped workflow by name (``example_workflows/api/NAME.json``) or any API-format file."""
    path = Path(name_or_path)
    if not path.is_file():
        path = api_dir() / f"{name_or_path.removesuffix('.json')}.json"
    if not path.is_file():
        names = ", ".join(available_workflows()) or "(none shipped)"
        raise CliError(f"workflow '{name_or_path}' not found: give a file path or one of: {names}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CliError(f"cannot read workflow {path}: {err}") from None
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        raise CliError(f"{path} is a UI-format workflow (what the browser saves). Use its API twin in "
                       f"{api_dir()} or export it with the frontend's 'Export (API)'.")
    if not isinstance(data, dict) or not data or not all(
            isinstance(n, dict) and isinstance(n.get("class_type"), str) and isinstance(n.get("inputs"), dict)
            for n in data.values()):
        raise CliError(f"{path} is not an API-format workflow ({{id: {{class_type, inputs}}}})")
    return data


def title_of(prompt: Prompt, node_id: str) -> str:
    node = prompt.get(node_id, {})
    return (node.get("_meta") or {}).get("title") or node.get("class_type", node_id)


def describe_node(prompt: Prompt, node_id: str) -> str:
    node = prompt.get(str(node_id))
    if node is None:
        return f"node {node_id}"
    title, cls = title_of(prompt, str(node_id)), node.get("class_type", "?")
    return f"node {node_id} '{title}' ({cls})" if title != cls else f"node {node_id} ({cls})"


def find_role(prompt: Prompt, role: roles.Role) -> list[str]:
    """Node ids playing ``role``: by title first, else by fallback class (only if unique)."""
    by_title = [nid for nid in prompt if title_of(prompt, nid).strip().lower() == role.title.lower()]
    if by_title:
        return by_title
    by_class = [nid for nid, n in prompt.items() if n["class_type"] in role.fallback_classes]
    return by_class if len(by_class) == 1 else []


def is_link(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2
            and isinstance(value[0], str) and isinstance(value[1], int))


def set_role(prompt: Prompt, role: roles.Role, value: Any) -> list[str]:
    ids = find_role(prompt, role)
    if not ids and role.required:
        raise CliError(f"the workflow has no node titled '{role.title}' (input '{role.input}'); the CLI "
                       f"fills nodes titled: {', '.join(r.title for r in roles.FILLED_ROLES)}")
    for nid in ids:
        prompt[nid]["inputs"][role.input] = value
    return ids


def input_spec(object_info: dict[str, Any], class_type: str, name: str) -> list[Any] | None:
    """``[type_or_options, {opts}]`` of one input from object_info, or None if unknown."""
    inputs = (object_info.get(class_type) or {}).get("input") or {}
    for section in ("required", "optional"):
        spec = (inputs.get(section) or {}).get(name)
        if spec is not None:
            return list(spec) if isinstance(spec, (list, tuple)) else [spec]
    return None


def combo_options(spec: list[Any] | None) -> list[Any] | None:
    if not spec:
        return None
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        return spec[1].get("options")
    return None


def _listing(options: list[Any]) -> str:
    shown = ", ".join(map(str, options[:MAX_LISTED])) or "(none)"
    return shown + (f" and {len(options) - MAX_LISTED} more" if len(options) > MAX_LISTED else "")


def known_inputs(object_info: dict[str, Any], class_type: str) -> list[str]:
    inputs = (object_info.get(class_type) or {}).get("input") or {}
    return [n for section in ("required", "optional") for n in (inputs.get(section) or {})]


def add_mask(prompt: Prompt, object_info: dict[str, Any], uploaded: str) -> list[str]:
    """Point the workflow's mask at ``uploaded``: fill a 'Mask' node, or add one and wire it
    into every node whose MASK input named 'mask' is unconnected or takes the Photo loader's mask
    (what the frontend's mask editor paints)."""
    ids = find_role(prompt, roles.MASK)
    if ids:
        for nid in ids:
            prompt[nid]["inputs"][roles.MASK.input] = uploaded
        return ids
    photos = set(find_role(prompt, roles.PHOTO))
    # an unconnected mask input, or one fed by the photo loader's own mask (the mask editor's)
    consumers = [nid for nid, n in prompt.items()
                 if (n["inputs"].get("mask") is None
                     or (is_link(n["inputs"]["mask"]) and n["inputs"]["mask"][0] in photos))
                 and (input_spec(object_info, n["class_type"], "mask") or [None])[0] == "MASK"]
    if not consumers:
        raise CliError("--mask given but this workflow has no node that takes a mask")
    new_id = str(max((int(k) for k in prompt if k.isdigit()), default=0) + 1)
    prompt[new_id] = {"class_type": roles.MASK_LOADER,
                      "inputs": {"image": uploaded, "channel": roles.MASK_CHANNEL},
                      "_meta": {"title": roles.MASK.title}}
    for nid in consumers:
        prompt[nid]["inputs"]["mask"] = [new_id, 0]
    return [new_id]


def set_seed(prompt: Prompt, seed: int) -> list[str]:
    touched = []
    loaders = set(find_role(prompt, roles.CHECKPOINT))
    for nid, node in prompt.items():
        if nid in loaders:
            continue
        for name in roles.SEED_INPUTS:
            if isinstance(node["inputs"].get(name), int) and not isinstance(node["inputs"][name], bool):
                node["inputs"][name] = seed
                touched.append(nid)
    return touched


def set_output_prefix(prompt: Prompt, prefix: str) -> None:
    """Give every saved file a run-unique prefix: two servers sharing one output folder (one
    per GPU) would otherwise race for the same ``ComfyUI_00001_.png``."""
    for nid, node in prompt.items():
        if isinstance(node["inputs"].get("filename_prefix"), str):
            node["inputs"]["filename_prefix"] = f"{prefix}_{nid}"


def _resolve_node(prompt: Prompt, ref: str) -> str:
    if ref in prompt:
        return ref
    matches = [nid for nid in prompt if title_of(prompt, nid) == ref]
    if not matches:
        matches = [nid for nid in prompt if title_of(prompt, nid).lower() == ref.lower()]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise CliError(f"--set: title '{ref}' matches nodes {', '.join(matches)}: use the node id")
    listing = "; ".join(f"{nid}='{title_of(prompt, nid)}'" for nid in prompt)
    raise CliError(f"--set: no node with id or title '{ref}'. Nodes: {listing}")


def _coerce(raw: str, spec: list[Any] | None, where: str) -> Any:
    """Turn the text after '=' into the input's type (as object_info declares it)."""
    options = combo_options(spec)
    kind = spec[0] if spec and isinstance(spec[0], str) else None
    try:
        if options is not None:
            if raw not in [str(o) for o in options]:
                raise CliError(f"--set {where}: '{raw}' is not one of: {_listing(options)}")
            return next(o for o in options if str(o) == raw)
        if kind == "INT":
            return int(raw)
        if kind == "FLOAT":
            return float(raw)
        if kind == "BOOLEAN":
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1")
        if kind == "STRING":
            return raw
    except ValueError:
        raise CliError(f"--set {where}: '{raw}' is not a valid {kind}") from None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def apply_sets(prompt: Prompt, object_info: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """Apply ``NODE.INPUT=VALUE`` overrides (NODE = id or title); returns what was set."""
    applied: dict[str, Any] = {}
    for item in assignments:
        target, eq, raw = item.partition("=")
        node_ref, dot, name = target.rpartition(".")
        if not eq or not dot or not node_ref or not name:
            raise CliError(f"--set '{item}': expected NODE.INPUT=VALUE (NODE is a node id or title)")
        nid = _resolve_node(prompt, node_ref)
        node = prompt[nid]
        valid = known_inputs(object_info, node["class_type"]) or list(node["inputs"])
        if name not in valid:
            raise CliError(f"--set '{item}': {describe_node(prompt, nid)} has no input '{name}'; "
                           f"inputs: {', '.join(valid)}")
        if is_link(node["inputs"].get(name)):
            raise CliError(f"--set '{item}': input '{name}' is connected to another node, not a value")
        value = _coerce(raw, input_spec(object_info, node["class_type"], name), f"{nid}.{name}")
        node["inputs"][name] = value
        applied[f"{nid}.{name}"] = value
    return applied


def check_nodes_installed(prompt: Prompt, object_info: dict[str, Any], where: str) -> None:
    missing = sorted({n["class_type"] for n in prompt.values()} - set(object_info))
    if not missing:
        return
    ours = [m for m in missing if m.startswith(roles.PACK_NODE_PREFIX) and not m.startswith("PSGTest")]
    if ours:
        raise CliError(
            f"the ComfyUI-PSG nodes are not installed on {where} (missing: {', '.join(ours)}). "
            f"Clone this pack into ComfyUI/custom_nodes/, run `pip install -r requirements.txt` in "
            f"ComfyUI's Python, restart ComfyUI and check its log for import errors.")
    raise CliError(f"{where} lacks node types this workflow needs: {', '.join(missing)} "
                   f"(install the custom nodes that provide them)")


def check_values(prompt: Prompt, object_info: dict[str, Any], where: str) -> None:
    """Refuse literal combo values (checkpoints, samplers...) the host does not offer."""
    for nid, node in prompt.items():
        for name, value in node["inputs"].items():
            if is_link(value) or name == "image":  # images are uploaded, checked by the host
                continue
            options = combo_options(input_spec(object_info, node["class_type"], name))
            if options is None or value in options:
                continue
            if nid in find_role(prompt, roles.GUIDANCE_VAE):
                raise CliError(
                    f"guidance VAE '{value}' ({describe_node(prompt, nid)}) not found on {where}: put "
                    f"{value}_encoder.safetensors and {value}_decoder.safetensors from {roles.TAESD_URL} in "
                    f"ComfyUI/models/vae_approx/, pick another with --guidance-vae NAME (offered: "
                    f"{_listing(options)}), or run without it: --guidance-vae {roles.NO_GUIDANCE_VAE} (LPIPS "
                    f"then decodes through the full VAE: slower).")
            if name == roles.CHECKPOINT.input:
                raise CliError(f"checkpoint '{value}' not found on {where}. Available: {_listing(options)}. "
                               f"Pass one with --ckpt NAME, or put the file in ComfyUI/models/checkpoints/.")
            raise CliError(f"{describe_node(prompt, nid)}: '{value}' is not a valid '{name}' on {where}; "
                           f"options: {_listing(options)}")


def describe_rejection(response: dict[str, Any], prompt: Prompt) -> str:
    """ComfyUI's /prompt 400 body (error + node_errors) as readable lines."""
    error = response.get("error") or {}
    lines = ["ComfyUI rejected the workflow: " + (
        error.get("message", "invalid prompt") if isinstance(error, dict) else str(error))]
    if isinstance(error, dict) and error.get("details"):
        lines[0] += f" ({error['details']})"
    for nid, info in (response.get("node_errors") or {}).items():
        for err in info.get("errors", []):
            detail = err.get("details") or ""
            if err.get("type") == "custom_validation_failed" and " - " in detail:
                # ComfyUI repeats a node's validate_inputs message once per input it checked
                detail = detail.split(" - ", 1)[1]
            line = f"  {describe_node(prompt, nid)}: {err.get('message', '?')}"
            line += f": {detail}" if detail else ""
            if line not in lines:
                lines.append(line)
    return "\n".join(lines)


def describe_execution_error(data: dict[str, Any], prompt: Prompt) -> str:
    node = describe_node(prompt, str(data.get("node_id", "?")))
    return (f"ComfyUI failed while running {node}: {data.get('exception_type', 'error')}: "
            f"{str(data.get('exception_message', '')).strip()}")


def remove_nodes(prompt: Prompt, ids: list[str]) -> None:
    """Delete nodes and every input linked to them (only optional inputs such as guidance_vae
    should point at what is removed; the host reports anything else as missing)."""
    for nid in ids:
        prompt.pop(nid, None)
    for node in prompt.values():
        for name, value in list(node["inputs"].items()):
            if is_link(value) and value[0] in ids:
                del node["inputs"][name]


def set_guidance_vae(prompt: Prompt, name: str) -> list[str]:
    """``--guidance-vae NAME``: load NAME in the 'Guidance VAE' node; ``none`` removes that node,
    so the perceptual gradient decodes through the model's own VAE."""
    ids = find_role(prompt, roles.GUIDANCE_VAE)
    if not ids:
        raise CliError(f"--guidance-vae given but the workflow has no node titled "
                       f"'{roles.GUIDANCE_VAE.title}' (a VAELoader feeding guidance_vae)")
    if name.lower() == roles.NO_GUIDANCE_VAE:
        remove_nodes(prompt, ids)
        return []
    for nid in ids:
        prompt[nid]["inputs"][roles.GUIDANCE_VAE.input] = name
    return ids


def fill(prompt: Prompt, *, image: str, source: str, target: str, ckpt: str | None,
         seed: int | None, guidance_vae: str | None = None) -> Prompt:
    """A copy of ``prompt`` with the photo, prompts, checkpoint, guidance VAE and seed filled in."""
    out = copy.deepcopy(prompt)
    set_role(out, roles.PHOTO, image)
    set_role(out, roles.SOURCE, source)
    set_role(out, roles.TARGET, target)
    if ckpt is not None:
        if not set_role(out, roles.CHECKPOINT, ckpt):
            raise CliError("--ckpt given but the workflow has no checkpoint loader titled 'Checkpoint'")
    if guidance_vae is not None:
        set_guidance_vae(out, guidance_vae)
    if seed is not None:
        set_seed(out, seed)
    return out
