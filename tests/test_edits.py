"""edits.py: parse answers and apply SEARCH/REPLACE blocks, string in, string out."""

from __future__ import annotations

import pytest

from autoresearch.edits import EditError, FormatError, apply_edit, apply_edits, parse_answer
from autoresearch.models import Edit

SOURCE = """\
import torch

LR = 1e-3  # learning rate
STEPS = 100


def train(run):
    model = build()
    for step in range(STEPS):
        loss = model(x)
        loss.backward()
    return model
"""


def block(path: str, search: str, replace: str) -> str:
    return f"{path}\n<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\n"


# -- parse_answer -----------------------------------------------------------------------------


def test_parse_title_rationale_and_blocks() -> None:
    text = (
        "TITLE: Raise the learning rate\n"
        "RATIONALE: The loss still falls fast at the end.\nA higher LR should help.\n\n"
        + block("train.py", "LR = 1e-3  # learning rate\n", "LR = 2e-3  # learning rate\n")
        + "\n"
        + block("train.py", "STEPS = 100\n", "STEPS = 120\n")
    )
    proposal = parse_answer(text)
    assert proposal.title == "Raise the learning rate"
    assert proposal.rationale == "The loss still falls fast at the end.\nA higher LR should help."
    assert [(e.path, e.search, e.replace) for e in proposal.edits] == [
        ("train.py", "LR = 1e-3  # learning rate\n", "LR = 2e-3  # learning rate\n"),
        ("train.py", "STEPS = 100\n", "STEPS = 120\n"),
    ]


def test_parse_tolerates_markdown_fences_labels_and_preamble() -> None:
    text = (
        "Here is my proposal.\n\n"
        "**TITLE:** Fewer steps\n\n"
        "Shorter is better here.\n\n"
        "FILE: `./train.py`\n"
        "```python\n"
        "<<<<<<< SEARCH\nSTEPS = 100\n=======\nSTEPS = 90\n>>>>>>> REPLACE\n"
        "```\n\n"
        "```python\n"  # no path: reuses the previous block's
        "<<<<<<< SEARCH\nLR = 1e-3  # learning rate\n=======\nLR = 1e-3\n>>>>>>> REPLACE\n"
        "```\n"
    )
    proposal = parse_answer(text)
    assert proposal.title == "Fewer steps"
    assert proposal.rationale == "Shorter is better here."
    assert [e.path for e in proposal.edits] == ["train.py", "train.py"]
    assert proposal.edits[1].replace == "LR = 1e-3\n"


def test_parse_whole_file_block() -> None:
    text = (
        "TITLE: Rewrite\n\ntrain.py\n<<<<<<< WHOLE FILE\nLR = 1\n\nSTEPS = 2\n>>>>>>> WHOLE FILE\n"
    )
    (edit,) = parse_answer(text).edits
    assert edit.content == "LR = 1\n\nSTEPS = 2\n"
    assert edit.search is None


def test_parse_empty_replace_deletes() -> None:
    text = "TITLE: Drop\n" + block("train.py", "STEPS = 100\n", "")
    (edit,) = parse_answer(text).edits
    assert edit.replace == ""
    assert "STEPS = 100" not in apply_edit(SOURCE, edit)


def test_parse_crlf_answer() -> None:
    text = ("TITLE: Crlf\n" + block("train.py", "STEPS = 100\n", "STEPS = 5\n")).replace(
        "\n", "\r\n"
    )
    (edit,) = parse_answer(text).edits
    assert (edit.search, edit.replace) == ("STEPS = 100\n", "STEPS = 5\n")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (block("train.py", "a\n", "b\n"), "no title"),
        ("TITLE:   \n" + block("train.py", "a\n", "b\n"), "TITLE line (line 1) is empty"),
        ("TITLE: x\nI would raise the LR.\n", "no edit blocks"),
        ("TITLE: x\ntrain.py\n<<<<<<< SEARCH\na\n=======\nb\n", "not closed"),
        (
            "TITLE: x\ntrain.py\n<<<<<<< SEARCH\na\n>>>>>>> REPLACE\n",
            "must end with a line '======='",
        ),
        ("TITLE: x\ntrain.py\n<<<<<<< WHOLE FILE\na\n", "'>>>>>>> WHOLE FILE'"),
        ("TITLE: x\n<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE\n", "has no file path"),
        ("TITLE: x\nChange it:\n<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE\n", "no file path"),
        ("TITLE: x\ntrain.py\n=======\nb\n>>>>>>> REPLACE\n", "never opened"),
        ("TITLE: x\ntrain.py\n<<<<<<< REPLACE\na\n", "not a marker I understand"),
    ],
)
def test_malformed_answers_explain_themselves(text: str, expected: str) -> None:
    with pytest.raises(FormatError) as info:
        parse_answer(text)
    assert expected in str(info.value)
    assert "\n" not in str(info.value).split("\n")[0]  # first line is a readable sentence


def test_unclosed_block_names_block_and_path_and_the_format() -> None:
    text = "TITLE: x\n" + block("train.py", "a\n", "b\n") + "train.py\n<<<<<<< SEARCH\nc\n"
    with pytest.raises(FormatError) as info:
        parse_answer(text)
    message = str(info.value)
    assert message.startswith("Block 2 for train.py")
    assert "<<<<<<< SEARCH" in message and ">>>>>>> REPLACE" in message  # the format reminder


def test_format_error_is_an_edit_error() -> None:
    with pytest.raises(EditError):
        parse_answer("nothing here")


# -- apply_edit: the matching ladder ----------------------------------------------------------


def test_exact_match() -> None:
    out = apply_edit(SOURCE, Edit(path="train.py", search="STEPS = 100\n", replace="STEPS = 7\n"))
    assert "STEPS = 7\n" in out and "STEPS = 100" not in out
    assert out.count("\n") == SOURCE.count("\n")


def test_fragment_within_a_line() -> None:
    out = apply_edit(SOURCE, Edit(path="train.py", search="1e-3", replace="3e-4"))
    assert "LR = 3e-4  # learning rate\n" in out


def test_whole_lines_never_match_inside_a_longer_line() -> None:
    source = "max = 1\nx = 2\n"
    with pytest.raises(EditError, match="not found"):
        apply_edit(source, Edit(path="t.py", search="x = 1\n", replace="x = 5\n"))


def test_uniform_indentation_offset_reindents_replacement() -> None:
    # The model dropped the function's indentation; the replacement is shifted back.
    edit = Edit(
        path="train.py",
        search="for step in range(STEPS):\n    loss = model(x)\n",
        replace="for step in range(STEPS):\n    loss = model(x) * 0.5\n\n    run.log(loss=loss)\n",
    )
    out = apply_edit(SOURCE, edit)
    assert (
        "    for step in range(STEPS):\n        loss = model(x) * 0.5\n\n"
        "        run.log(loss=loss)\n        loss.backward()\n"
    ) in out


def test_indentation_offset_the_other_way() -> None:
    source = "def f():\n    return 1\n"
    edit = Edit(
        path="t.py",
        search="        def f():\n            return 1\n",
        replace=("        def f():\n            return 2\n"),
    )
    assert apply_edit(source, edit) == "def f():\n    return 2\n"


def test_trailing_whitespace_differences_are_tolerated() -> None:
    source = "a = 1   \nb = 2\n"
    out = apply_edit(source, Edit(path="t.py", search="a = 1\nb = 2\n", replace="a = 3\nb = 2\n"))
    assert out == "a = 3\nb = 2\n"


def test_non_uniform_indentation_is_not_matched() -> None:
    source = "if x:\n    a = 1\n    b = 2\n"
    edit = Edit(path="t.py", search="if x:\n  a = 1\n    b = 2\n", replace="pass\n")
    with pytest.raises(EditError, match="not found"):
        apply_edit(source, edit)


def test_ambiguous_match_lists_the_places() -> None:
    source = "x = 1\ny = 2\nx = 1\n"
    with pytest.raises(EditError) as info:
        apply_edit(source, Edit(path="t.py", search="x = 1\n", replace="x = 3\n"))
    message = str(info.value)
    assert "matches 2 places (lines 1, 3)" in message
    assert "exactly once" in message


def test_ambiguous_fragment() -> None:
    with pytest.raises(EditError, match="matches 2 places"):
        apply_edit("a = 1\nb = 1\n", Edit(path="t.py", search=" = 1", replace=" = 2"))


def test_ambiguous_after_indentation_shift() -> None:
    source = "def f():\n    pass\n\ndef g():\n    if y:\n        pass\n"
    with pytest.raises(EditError, match="matches 2 places"):
        apply_edit(source, Edit(path="t.py", search="  pass\n", replace="  return\n"))


def test_not_found_shows_the_closest_lines() -> None:
    edit = Edit(
        path="train.py",
        search="    for step in range(N_STEPS):\n        loss = model(x)\n",
        replace="",
    )
    with pytest.raises(EditError) as info:
        apply_edit(SOURCE, edit)
    message = str(info.value)
    assert "was not found" in message
    assert "Did you mean these lines (9-10 of the current file)?" in message
    assert "    for step in range(STEPS):\n        loss = model(x)\n" in message


def test_not_found_without_anything_close_gives_no_hint() -> None:
    with pytest.raises(EditError) as info:
        apply_edit(SOURCE, Edit(path="train.py", search="zzzz qqqq\n", replace=""))
    assert "Did you mean" not in str(info.value)


def test_elided_search_gets_a_hint() -> None:
    edit = Edit(path="train.py", search="def train(run):\n    ...\n    return model\n", replace="")
    with pytest.raises(EditError, match=r"Do not abbreviate with '\.\.\.'"):
        apply_edit(SOURCE, edit)


def test_empty_search_is_an_error() -> None:
    with pytest.raises(EditError, match="is empty"):
        apply_edit(SOURCE, Edit(path="train.py", search="\n  \n", replace="x = 1\n"))


def test_whole_file_replaces_everything() -> None:
    assert apply_edit(SOURCE, Edit(path="train.py", content="LR = 1\n")) == "LR = 1\n"


# -- line endings -----------------------------------------------------------------------------


def test_crlf_file_matches_lf_search_and_keeps_crlf() -> None:
    source = SOURCE.replace("\n", "\r\n")
    out = apply_edit(
        source,
        Edit(
            path="train.py",
            search="LR = 1e-3  # learning rate\nSTEPS = 100\n",
            replace="LR = 2e-3\nSTEPS = 100\n",
        ),
    )
    assert "LR = 2e-3\r\nSTEPS = 100\r\n" in out
    assert "\n" not in out.replace("\r\n", "")


def test_crlf_search_on_lf_file_keeps_lf() -> None:
    out = apply_edit(
        SOURCE, Edit(path="train.py", search="STEPS = 100\r\n", replace="STEPS = 1\r\n")
    )
    assert "STEPS = 1\n" in out and "\r" not in out


def test_crlf_whole_file_keeps_crlf() -> None:
    out = apply_edit("a\r\nb\r\n", Edit(path="t.py", content="c\nd\n"))
    assert out == "c\r\nd\r\n"


def test_file_without_final_newline() -> None:
    out = apply_edit("a = 1\nb = 2", Edit(path="t.py", search="b = 2\n", replace="b = 3\n"))
    assert out == "a = 1\nb = 3"
    out = apply_edit("a = 1\nb = 2", Edit(path="t.py", search="a = 1\n", replace="a = 0\n"))
    assert out == "a = 0\nb = 2"


# -- apply_edits ------------------------------------------------------------------------------


def test_apply_edits_is_a_dry_run_in_order() -> None:
    files = {"train.py": SOURCE}
    edits = [
        Edit(path="train.py", search="STEPS = 100\n", replace="STEPS = 200\n"),
        Edit(path="train.py", search="STEPS = 200\n", replace="STEPS = 300\n"),  # sees the first
    ]
    out = apply_edits(files, edits)
    assert "STEPS = 300\n" in out["train.py"]
    assert files == {"train.py": SOURCE}  # inputs untouched
    assert out is not files


def test_apply_edits_names_the_failing_edit() -> None:
    edits = [
        Edit(path="train.py", search="STEPS = 100\n", replace="STEPS = 200\n"),
        Edit(path="train.py", search="nothing like this\n", replace=""),
    ]
    with pytest.raises(EditError, match=r"^Edit 2 of 2 \(train.py\): The SEARCH text"):
        apply_edits({"train.py": SOURCE}, edits)


def test_apply_edits_unknown_path_lists_the_editable_files() -> None:
    with pytest.raises(
        EditError, match=r"no file 'model.py'\. The files you can edit are: train\.py"
    ):
        apply_edits({"train.py": SOURCE}, [Edit(path="model.py", search="a\n", replace="b\n")])


def test_parse_then_apply_round_trip() -> None:
    answer = "TITLE: Longer\n\nMore steps.\n\n" + block(
        "train.py", "    for step in range(STEPS):\n", "    for step in range(2 * STEPS):\n"
    )
    out = apply_edits({"train.py": SOURCE}, parse_answer(answer).edits)
    assert "range(2 * STEPS)" in out["train.py"]


def test_format_error_type_survives_apply_edits_wrapping() -> None:
    # apply_edits re-raises with the edit's position but keeps the error class.
    with pytest.raises(EditError) as info:
        apply_edits({"t.py": "a\n"}, [Edit(path="t.py", search=" ", replace="b")])
    assert type(info.value) is EditError
