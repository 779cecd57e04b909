"""core/config.py: `canonical`, the one representation of a rule's dict params."""

from core.config import canonical


def test_canonical_params_have_one_text_for_equal_settings():
    written = {"top_p": 0.9, "tasks": {"repetition": {"num_samples": 2, "decodings": ["greedy", "sampling"]}}, "n": 3}
    reordered = {"n": 3, "tasks": {"repetition": {"decodings": ["greedy", "sampling"], "num_samples": 2}}, "top_p": 0.9}
    assert repr(written) != repr(reordered)
    assert repr(canonical(written)) == repr(canonical(reordered))
    assert canonical(written) == written
    # a list's order is a value (the table's rows, the decodings): it stays; the dicts inside it are sorted
    assert canonical([{"b": 1, "a": 2}, "x"]) == [{"a": 2, "b": 1}, "x"]
    assert list(canonical([{"b": 1, "a": 2}])[0]) == ["a", "b"]
    assert repr(canonical(["sampling", "greedy"])) != repr(canonical(["greedy", "sampling"]))
