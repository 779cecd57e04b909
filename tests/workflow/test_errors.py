"""Rewards that misbehave, long prompts, and the one-line error of the entry points."""

import math
import subprocess
import sys

import pytest

from core.errors import SuiteError
from core.models import encode_prompts
from methods.common.rewards import score_rewards
from tests.conftest import ROOT


def raising(prompts, completions, **kwargs):
    """A configuration problem stops the job; any other exception is an outage, retried (tests/methods/test_checkpoint_safety.py)."""
    raise SuiteError("reward 'raising': scorer 'x' is not installed")


@pytest.mark.parametrize(
    "reward, message",
    [
        (raising, "scorer 'x' is not installed"),
        (lambda p, c, **k: [math.nan] * len(c), "non-finite"),
        (lambda p, c, **k: [math.inf] * len(c), "non-finite"),
        (lambda p, c, **k: [0.5], "returned 1 scores for 3 completions"),
        (lambda p, c, **k: ["high"] * len(c), "non-numeric"),
    ],
)
def test_bad_rewards_raise_a_one_line_suite_error(reward, message):
    with pytest.raises(SuiteError, match=message) as info:
        score_rewards(reward, ["a", "b", "c"], ["x", "y", "z"])
    assert "\n" not in str(info.value)


def test_none_rewards_pass_through_for_the_caller_to_drop():
    assert score_rewards(lambda p, c, **k: [1, None, 0.5], ["a"] * 3, ["x"] * 3) == [1.0, None, 0.5]


def test_long_prompts_are_cut_from_the_left_with_one_warning(tiny):
    _, tokenizer, _ = tiny
    texts = ["the cat sat on the mat " * 20, "short"]
    with pytest.warns(UserWarning, match="1 of 2 prompts exceed 10 tokens") as record:
        ids = encode_prompts(tokenizer, texts, 10)
    assert len(record) == 1
    full = tokenizer(texts[0], add_special_tokens=False)["input_ids"]
    assert ids[0] == full[-10:] and len(ids[1]) < 10


def test_entry_points_print_one_line_and_exit_1():
    code = (
        "from core.errors import run_cli, SuiteError\n"
        "def main():\n    raise SuiteError('data/x.jsonl:3: no prompt')\nrun_cli(main)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr == "error: data/x.jsonl:3: no prompt\n"
