"""``--p2p`` / ``--reweight`` / ``--blend``: which workflow runs and what is set on its
Prompt-to-Prompt node (no ComfyUI needed)."""

from __future__ import annotations

import pytest

from psg_cli import main, roles
from psg_cli.errors import CliError


def _args(*extra: str):
    return main.build_parser().parse_args(["edit", "cat.png", "--source", "a cat", "--target", "a tiger",
                                           *extra])


def test_core_cli_p2p_picks_the_p2p_workflow_and_sets_its_node() -> None:
    args = _args("--p2p", "reweight", "--reweight", "tiger:2, striped", "--blend", "cat, tiger",
                 "--set", "Prompt-to-Prompt.cross_window=0.5")
    main._apply_p2p(args)
    assert args.workflow == roles.P2P_WORKFLOW
    assert args.sets == ["Prompt-to-Prompt.mode=reweight", "Prompt-to-Prompt.reweight_words=tiger:2, striped",
                         "Prompt-to-Prompt.blend_words=cat, tiger", "Prompt-to-Prompt.cross_window=0.5"]
    plain = _args()
    main._apply_p2p(plain)
    assert plain.workflow == "psg_edit" and plain.sets == []


@pytest.mark.parametrize(("extra", "message"), [
    (("--blend", "cat"), "need --p2p"),
    (("--p2p", "reweight"), "needs --reweight"),
    (("--p2p", "refine", "--workflow", "psg_advanced"), "has no node titled 'Prompt-to-Prompt'"),
])
def test_core_cli_p2p_misuse_is_a_clear_error(extra, message) -> None:
    with pytest.raises(CliError, match=message):
        main._apply_p2p(_args(*extra))
